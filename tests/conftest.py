"""Test-wide settings: never touch the network, keep torch to the CI machine's 2 cores; and the
one fake Hub (``fake_hub``) that every push test uses instead of patching ``HfApi`` its own way.
"""

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ACCELERATE_USE_CPU", "1")


class FakeHub:
    """Stands in for the Hub behind ``huggingface_hub.HfApi``: records every call and keeps what
    was sent (uploaded folders are copied, commit operations read), so a test can check a push
    without a network. Files put in :attr:`remote_files` are what ``hf_hub_download`` finds."""

    def __init__(self, root: Path):
        self.root = root
        #: (method name, repo_id, keyword arguments) in call order
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        #: repo_id -> {path in repo: bytes} of everything uploaded
        self.sent: dict[str, dict[str, bytes]] = {}
        #: repo_id -> {filename: text} served by hf_hub_download
        self.remote_files: dict[str, dict[str, str]] = {}

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        """The keyword arguments (with ``repo_id``) of every call to ``method``."""
        return [{"repo_id": repo, **kwargs} for name, repo, kwargs in self.calls if name == method]

    def folder(self, repo_id: str) -> Path:
        """A folder holding everything sent to ``repo_id``, laid out as in the repo."""
        folder = self.root / repo_id.replace("/", "--")
        for path, content in self.sent.get(repo_id, {}).items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(content)
        return folder

    def _commit(self, repo_id: str, message: str | None) -> Any:
        from huggingface_hub import CommitInfo

        url = f"https://huggingface.co/{repo_id}/commit/{len(self.calls):040d}"
        return CommitInfo(
            commit_url=url, commit_message=message or "", commit_description="", oid="0" * 40
        )

    def create_repo(self, api: Any, repo_id: str, **kwargs: Any) -> Any:
        from huggingface_hub import RepoUrl

        self.calls.append(("create_repo", repo_id, kwargs))
        kind = kwargs.get("repo_type") or "model"
        prefix = "" if kind == "model" else f"{kind}s/"
        return RepoUrl(f"https://huggingface.co/{prefix}{repo_id}")

    def upload_folder(self, api: Any, *, repo_id: str, folder_path: Any, **kwargs: Any) -> Any:
        self.calls.append(("upload_folder", repo_id, {"folder_path": folder_path, **kwargs}))
        base = Path(folder_path)
        prefix = kwargs.get("path_in_repo") or ""
        files = self.sent.setdefault(repo_id, {})
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            files[str(Path(prefix) / path.relative_to(base))] = path.read_bytes()
        return self._commit(repo_id, kwargs.get("commit_message"))

    def upload_file(
        self, api: Any, *, path_or_fileobj: Any, path_in_repo: str, repo_id: str, **kwargs: Any
    ) -> Any:
        self.calls.append(("upload_file", repo_id, {"path_in_repo": path_in_repo, **kwargs}))
        self.sent.setdefault(repo_id, {})[path_in_repo] = _read_bytes(path_or_fileobj)
        return self._commit(repo_id, kwargs.get("commit_message"))

    def create_commit(self, api: Any, repo_id: str, operations: Any, **kwargs: Any) -> Any:
        operations = list(operations)
        self.calls.append(("create_commit", repo_id, {"operations": operations, **kwargs}))
        files = self.sent.setdefault(repo_id, {})
        for operation in operations:
            if hasattr(operation, "path_or_fileobj"):
                files[operation.path_in_repo] = _read_bytes(operation.path_or_fileobj)
        return self._commit(repo_id, kwargs.get("commit_message"))

    def hf_hub_download(self, api: Any, repo_id: str, filename: str, **kwargs: Any) -> str:
        from huggingface_hub.errors import EntryNotFoundError

        self.calls.append(("hf_hub_download", repo_id, {"filename": filename, **kwargs}))
        text = self.remote_files.get(repo_id, {}).get(filename)
        if text is None:
            raise EntryNotFoundError(f"{filename} not found in {repo_id}")
        path = self.root / "downloads" / repo_id.replace("/", "--") / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)


def _read_bytes(source: Any) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, (str, Path)):
        return Path(source).read_bytes()
    return source.read()


@pytest.fixture
def fake_hub(monkeypatch, tmp_path) -> FakeHub:
    """A :class:`FakeHub` patched into ``huggingface_hub.HfApi`` for one test. (The module-level
    ``huggingface_hub.upload_folder`` & co. are methods bound at import and are not patched:
    milan_hf always goes through ``HfApi``.)"""
    from huggingface_hub import HfApi

    hub = FakeHub(tmp_path / "fake_hub")
    for name in ("create_repo", "upload_folder", "upload_file", "create_commit", "hf_hub_download"):
        method = getattr(hub, name)
        monkeypatch.setattr(HfApi, name, lambda api, *a, _m=method, **kw: _m(api, *a, **kw))
    return hub
