"""Fingerprints of a describe run: a rerun resumes only when these are the same.

Everything is compared by content, not by where it lives or when it was installed: the vision
model by a digest of its weights (so a resumed run never mixes layers of two different random
models), model and captioner directories by the hashes of their files, the probe set by the
names, sizes and modification times of its files and, where that is cheap, their contents.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from .probe_images import ProbeImages
from .vision_models import VisionModel, weights_digest

#: Probe sets up to this many bytes are hashed by content (file times then do not matter).
CONTENT_HASH_LIMIT = 256 * 1024 * 1024

# Files of a model directory that do not change what it computes.
_DOCUMENTATION_FILES = {"training_metrics.json", "held_out_evaluation.json"}


def hash_bytes(*chunks: bytes) -> str:
    """A short sha256 hex digest of ``chunks``."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()[:16]


def _file_digest(path: Path, digest: Any | None = None) -> Any:
    digest = digest or hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest


def file_fingerprint(path: Path) -> str:
    """A hash of the file's contents (not its time: a reinstall must not break resuming)."""
    return f"{path.name}:{_file_digest(path).hexdigest()[:16]}"


def directory_fingerprint(directory: Path) -> dict:
    """The directory's path and the content hashes of its files (cards and logs left out)."""
    return {
        "path": str(directory.resolve()),
        "files": sorted(
            file_fingerprint(path)
            for path in directory.iterdir()
            if path.is_file() and path.suffix != ".md" and path.name not in _DOCUMENTATION_FILES
        ),
    }


def model_fingerprint(model: Any, vision_model: VisionModel, checkpoint: Any) -> dict:
    """The model as given, the digest of the weights it has now, and its preprocessing."""
    if isinstance(model, (str, Path)):
        identity: Any = str(model)
        if Path(model).is_dir():
            identity = directory_fingerprint(Path(model))
    else:
        identity = {"class": type(vision_model.module).__qualname__}
    return {
        "model": identity,
        # Whatever the source (random init, --pretrained, --checkpoint): the weights themselves.
        "weights": weights_digest(vision_model.module),
        "checkpoint": None if checkpoint is None else file_fingerprint(Path(checkpoint)),
        "geometry": vision_model.geometry,
    }


def probe_fingerprint(probe: ProbeImages) -> dict:
    """The probe set's source record plus a fingerprint of its contents: images changed in
    place, added or removed give another fingerprint.

    Stricter than :func:`milan_hf.probe_images.probe_fingerprint` (file names, sizes and
    times, which re-opening a recorded source checks cheaply): resuming a run reads the bytes
    up to ``CONTENT_HASH_LIMIT``, so images merely touched or copied still resume."""
    source = dict(probe.source)
    path = source.get("path")
    if path is None or not Path(path).exists():  # in memory or from the Hub: datasets' own
        source["fingerprint"] = probe.dataset._fingerprint
        return source
    root = Path(path)
    files = _probe_files(probe, root)
    sizes = [file.stat().st_size for file in files]
    if sum(sizes) <= CONTENT_HASH_LIMIT:
        digest = hashlib.sha256()
        for file in files:
            digest.update(os.path.relpath(file, root if root.is_dir() else root.parent).encode())
            _file_digest(file, digest)
        source["contents"] = digest.hexdigest()[:16]
    else:  # too big to read on every run: names, sizes and modification times
        stats = [f"{file}:{size}:{file.stat().st_mtime_ns}" for file, size in zip(files, sizes)]
        source["files"] = hash_bytes("\n".join(stats).encode())
    source["num_files"] = len(files)
    return source


def _probe_files(probe: ProbeImages, root: Path) -> list[Path]:
    if probe.source.get("kind") == "folder":  # exactly the files the probe set reads
        column = probe.dataset.select_columns([probe.image_column])
        return [Path(value["path"]) for value in column[probe.image_column]]
    if root.is_file():
        return [root]
    return sorted(file for file in root.rglob("*") if file.is_file())


def captioner_fingerprint(captioner: Any, embedded: Path) -> Any:
    """A loaded captioner by its weights, a directory by its files, a Hub id by name."""
    if isinstance(captioner, torch.nn.Module):
        return {"class": type(captioner).__qualname__, "weights": weights_digest(captioner)}
    location = Path(embedded if captioner is None else captioner)
    if location.is_dir():
        fingerprint = directory_fingerprint(location)
        if captioner is None:  # the embedded one: the same wherever the package is installed
            fingerprint["path"] = "embedded"
        return fingerprint
    return str(captioner)
