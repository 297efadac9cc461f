"""Probe images: where they come from, and reading them robustly.

A probe set is a ``datasets.Dataset`` with an image column. It can be given directly, or named
by a path or hub id:

- a directory written by ``Dataset.save_to_disk`` (``load_from_disk``);
- a ``.parquet`` file or a directory of parquet files;
- a plain folder of image files (searched recursively, in sorted path order);
- a hub dataset id (when online).

The probe set's *source* is recorded with every exemplar set, so exemplar images can be
materialised again later from the stored ``ids`` alone.

Every image is turned into 8-bit RGB by :func:`to_rgb`, which scales high-bit-depth images
(16-bit PNGs, 32-bit integer and float TIFFs) instead of clipping them to white, and applies the
EXIF orientation as every image viewer does.

:func:`probe_fingerprint` identifies a probe set by content (file names, sizes, modification
times; dataset fingerprints), so a resumed run can tell that images changed in place.

Unreadable images are skipped and counted, never fatal: a corrupt file in a folder of 50,000
must not throw away an hour of extraction. Their names are reported at the end of the run and
recorded in the output's metadata. A skipped image can never be an exemplar.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image, ImageOps

#: Images more elongated than this are skipped like unreadable ones.
MAX_ASPECT_RATIO = 50
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass
class ProbeImages:
    """A probe dataset, its image column, and a record of where it came from."""

    dataset: datasets.Dataset
    image_column: str
    source: dict[str, Any]

    def __len__(self) -> int:
        return len(self.dataset)

    def open_image(self, index: int) -> Image.Image:
        """The RGB image of row ``index``; raises ``OSError`` naming the file if unreadable."""
        return _decode(self.dataset[int(index)][self.image_column], index)

    def image_name(self, index: int) -> str:
        return _image_name(self.dataset[int(index)][self.image_column], index)


def load_probe_images(
    images: str | Path | datasets.Dataset | datasets.DatasetDict | ProbeImages,
    *,
    split: str | None = None,
    image_column: str | None = None,
) -> ProbeImages:
    """Resolve a probe set given as a dataset, a path or a hub id (see module docs)."""
    if isinstance(images, ProbeImages):
        return images
    if isinstance(images, (datasets.Dataset, datasets.DatasetDict)):
        dataset = _pick_split(images, split, where="the given dataset")
        source: dict[str, Any] = {"kind": "in-memory"}
    else:
        dataset, source = _from_path_or_id(str(images), split)
    column = _image_column(dataset, image_column)
    # Decode ourselves, so that one unreadable image is a skipped row, not a crash.
    dataset = dataset.cast_column(column, datasets.Image(decode=False))
    if len(dataset) == 0:
        raise ValueError(f"the probe set {source.get('path', source)} has no images")
    source["image_column"] = column
    source["num_images"] = len(dataset)
    return ProbeImages(dataset=dataset, image_column=column, source=source)


def probe_images_from_source(source: dict[str, Any]) -> ProbeImages:
    """Re-open a probe set from the ``source`` record stored with an exemplar set."""
    kind = source.get("kind")
    if kind == "in-memory":
        raise ValueError(
            "these exemplars were extracted from an in-memory dataset: pass the probe images "
            "explicitly (probe_images=...) to materialise them"
        )
    location = source["path"] if kind != "hub" else source["id"]
    probe = load_probe_images(
        location, split=source.get("split"), image_column=source.get("image_column")
    )
    expected = source.get("num_images")
    if expected is not None and len(probe) != expected:
        raise ValueError(
            f"the probe set at {location} now has {len(probe)} images but the exemplars were "
            f"extracted from {expected}: ids would point at the wrong images"
        )
    if "content" in source and probe_fingerprint(probe)["content"] != source["content"]:
        raise ValueError(
            f"the probe set at {location} changed since the exemplars were extracted (files "
            "replaced, edited or touched): ids may point at other images; pass the original "
            "probe images explicitly if they are the same"
        )
    return probe


class ProbeTensorDataset(torch.utils.data.Dataset):
    """Torch view of (a subset of) a probe set: (pixels, id, ok, error) per row."""

    def __init__(
        self,
        probe: ProbeImages,
        transform: Callable[[Image.Image], torch.Tensor],
        indices: list[int] | None = None,
        input_size: tuple[int, int] = (224, 224),
    ):
        self.dataset = probe.dataset
        self.column = probe.image_column
        self.transform = transform
        self.indices = list(range(len(probe))) if indices is None else list(indices)
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, bool, str]:
        index = self.indices[position]
        try:
            value = self.dataset[index][self.column]
            image = _decode(value, index)
            width, height = image.size
            if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
                # resizing the shorter side to ~256 px would make a 1x10000 image 7 GB of floats
                raise OSError(
                    f"image {_image_name(value, index)} is {width}x{height}: an aspect ratio "
                    f"beyond 1:{MAX_ASPECT_RATIO} is not probed"
                )
            return self.transform(image), index, True, ""
        except Exception as error:  # a corrupt or non-image file: skip and count it
            return torch.zeros(3, *self.input_size), index, False, f"{error}"


def _image_name(value: Any, index: int) -> str:
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return f"row {index}"


def _decode(value: Any, index: int) -> Image.Image:
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, dict):
        path = value.get("path")
        try:
            if value.get("bytes") is not None:
                image = Image.open(io.BytesIO(value["bytes"]))
            elif path:
                image = Image.open(path)
            else:
                raise OSError("no bytes and no path")
            image.load()
            return to_rgb(image)
        except Exception as error:
            raise OSError(f"cannot read image {path or f'at row {index}'}: {error}") from error
    if isinstance(value, str):
        return _decode({"path": value, "bytes": None}, index)
    raise OSError(f"row {index} holds no image (got {type(value).__name__})")


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB image, upright as its EXIF orientation says.

    ``convert("RGB")`` clips wider pixel modes at 255, so these are scaled first:

    - 16-bit (``I;16*``): by the full 16-bit range (``value >> 8``);
    - 32-bit integer (``I``): values within 0..255 as they are, within 0..65535 by the 16-bit
      range (older Pillow opens 16-bit PNGs as ``I``), anything else by its min..max;
    - float (``F``): values within 0..1 by that range, within 0..255 as they are, anything else
      by its min..max (NaN as the minimum).
    """
    if image.getexif().get(0x0112, 1) not in (0, 1):  # 0x0112: Orientation; 1 is upright
        image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = Image.fromarray(_eight_bit(np.asarray(image), image.mode), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _eight_bit(values: np.ndarray, mode: str) -> np.ndarray:
    if mode.startswith("I;16") and mode != "I;16S":
        return (values.astype(np.uint16) >> 8).astype(np.uint8)
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if mode == "F" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    elif low >= 0.0 and high <= 255.0:
        low, high = 0.0, 255.0
    elif mode != "F" and low >= 0.0 and high <= 65535.0:
        low, high = 0.0, 65535.0
    scaled = (np.nan_to_num(values, nan=low) - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def probe_fingerprint(probe: ProbeImages) -> dict[str, Any]:
    """The probe set's source record plus ``content``: a hash of what it holds, which changes
    when images are added, removed, replaced or edited in place.

    Hashed are the dataset's own fingerprint (in-memory and hub datasets; for these it is a
    hash of the content or the data files' revision), the name, size and modification time of
    every file the data is read from (parquet, ``save_to_disk`` files), and of every image file
    a row refers to by path (image folders). Image bytes are not read: cheap for 50,000 files.
    """
    digest = hashlib.sha256()
    kind = probe.source.get("kind")
    if kind in ("in-memory", "hub"):
        digest.update(str(probe.dataset._fingerprint).encode())
    root = Path(probe.source["path"]) if "path" in probe.source else None
    if root is not None and kind in ("parquet", "disk"):
        data_files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in data_files:
            _hash_file_stat(digest, path, root)
    for path in _referenced_image_paths(probe):
        _hash_file_stat(digest, Path(path), root)
    return {**probe.source, "content": digest.hexdigest()[:24]}


def _hash_file_stat(digest: Any, path: Path, root: Path | None) -> None:
    try:
        stat = path.stat()
        facts = f"{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        facts = "missing"
    name = path.relative_to(root) if root is not None and path.is_relative_to(root) else path
    digest.update(f"{name}\0{facts}\0".encode())


def _referenced_image_paths(probe: ProbeImages) -> list[str]:
    """Paths of the rows whose image is a file (no embedded bytes), read from Arrow directly."""
    column = probe.dataset.with_format("arrow")[:][probe.image_column]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return [p for p in column.to_pylist() if p]
    if not pa.types.is_struct(column.type) or column.type.get_field_index("path") < 0:
        return []
    paths = pc.struct_field(column, "path")
    if column.type.get_field_index("bytes") >= 0:
        paths = pc.if_else(pc.is_null(pc.struct_field(column, "bytes")), paths, None)
    return [p for p in paths.to_pylist() if p]


def _pick_split(
    data: datasets.Dataset | datasets.DatasetDict, split: str | None, where: str
) -> datasets.Dataset:
    if isinstance(data, datasets.Dataset):
        own = str(data.split) if data.split is not None else None
        if split is not None and split != own:
            # ``split`` would be silently ignored: probing other images than asked for
            there = f"its one split is {own!r}" if own else "it has no named splits"
            raise ValueError(f"split {split!r} not in {where}: {there}; drop the split")
        return data
    if split is not None:
        if split not in data:
            raise ValueError(f"split {split!r} not in {where}; available: {list(data)}")
        return data[split]
    if len(data) == 1:
        return next(iter(data.values()))
    for default in ("validation", "test", "train"):
        if default in data:
            return data[default]
    raise ValueError(f"{where} has several splits {list(data)}: choose one with split=")


def _image_column(dataset: datasets.Dataset, requested: str | None) -> str:
    if requested is not None:
        if requested not in dataset.column_names:
            raise ValueError(
                f"image column {requested!r} not found; columns: {dataset.column_names}"
            )
        return requested
    image_columns = [
        name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)
    ]
    if image_columns:
        return "image" if "image" in image_columns else image_columns[0]
    if "image" in dataset.column_names:
        return "image"
    raise ValueError(
        f"no image column in the probe set (columns: {dataset.column_names}); "
        "name it with image_column="
    )


def _from_path_or_id(location: str, split: str | None) -> tuple[datasets.Dataset, dict]:
    path = Path(location).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_file() and path.suffix == ".parquet":
            data = datasets.load_dataset("parquet", data_files=str(path), split="train")
            return _pick_split(data, split, str(path)), {"kind": "parquet", "path": str(path)}
        if path.is_dir():
            if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
                data = _pick_split(datasets.load_from_disk(str(path)), split, where=str(path))
                return data, {"kind": "disk", "path": str(path), "split": split}
            parquet_files = sorted(str(p) for p in path.rglob("*.parquet"))
            if parquet_files:
                data = datasets.load_dataset("parquet", data_files=parquet_files, split="train")
                return _pick_split(data, split, str(path)), {"kind": "parquet", "path": str(path)}
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not files:
                raise ValueError(f"no image files ({sorted(IMAGE_EXTENSIONS)}) under {path}")
            data = datasets.Dataset.from_dict(
                {"image": [str(p) for p in files]},
                features=datasets.Features({"image": datasets.Image(decode=False)}),
            )
            return _pick_split(data, split, f"the image folder {path}"), {
                "kind": "folder",
                "path": str(path),
            }
        raise ValueError(f"{path} is neither an image folder, a dataset directory nor parquet")
    if "/" in location and not location.startswith((".", "/")):
        try:
            data = datasets.load_dataset(location, split=split or "train")
        except Exception as error:
            raise FileNotFoundError(
                f"{location!r} is not a local path and could not be loaded from the Hub "
                f"({type(error).__name__}: {error})"
            ) from error
        return data, {"kind": "hub", "id": location, "split": split or "train"}
    raise FileNotFoundError(f"probe images not found: {location}")
