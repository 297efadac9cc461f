"""Publishing datasets to the Hugging Face Hub as parquet shards plus a dataset card.

The folder written here is exactly what ``load_dataset(repo_id)`` reads back (``data/*.parquet``
and a ``README.md`` whose YAML header declares the split), so pushing is one ``upload_folder``.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub import HfApi


def write_dataset_folder(
    dataset: datasets.Dataset,
    folder: str | Path,
    card: str,
    *,
    split: str = "train",
    max_rows_per_shard: int = 500,
) -> list[Path]:
    """Write ``dataset`` as ``data/{split}-XXXXX-of-YYYYY.parquet`` shards and ``README.md``."""
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    num_shards = max(1, math.ceil(len(dataset) / max_rows_per_shard))
    paths = []
    for index in range(num_shards):
        shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        path = folder / "data" / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        shard.to_parquet(str(path))
        paths.append(path)
    (folder / "README.md").write_text(card)
    return paths


def push_dataset_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload with milan_hf",
) -> Any:
    """Create the dataset repo if needed and upload ``folder`` in one commit."""
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="dataset",
        commit_message=commit_message,
    )


def push_dataset(
    dataset: datasets.Dataset,
    repo_id: str,
    card: str,
    *,
    private: bool = False,
    token: str | None = None,
) -> Any:
    """Write ``dataset`` and its card to a temporary folder and push it."""
    with tempfile.TemporaryDirectory(prefix="milan_hf_push_") as folder:
        write_dataset_folder(dataset, folder, card)
        return push_dataset_folder(folder, repo_id, private=private, token=token)
