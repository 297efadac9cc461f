"""Saving, loading, exporting and publishing exemplar sets.

An output directory holds ``exemplars/`` (``Dataset.save_to_disk``) and ``milan_exemplars.json``
(the extraction metadata: model, layers, k, quantile, preprocessing geometry, probe source,
skipped images). On disk the masks are bit-packed and deflated (``milan_hf.mask_packing``,
recorded as ``mask_storage`` in the metadata file): a set costs a small fraction of its uint8
masks, and :func:`load_exemplars` gives back the identical masks. Sets written before that
(uint8 masks on disk) still load. It is written to a temporary sibling and renamed into place
only when complete, so an interrupted run never leaves a directory that :func:`load_exemplars`
accepts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from . import mask_packing, schema
from .exemplars import exemplar_metadata, materialize_images
from .staged_output import remove_stale_staging, require_own_output, staged_directory

METADATA_FILE = "milan_exemplars.json"
DATASET_DIR = "exemplars"
#: ``milan-hf exemplars --export-original`` writes the original MILAN layout here.
ORIGINAL_DIR = "original"
#: What an exemplar output directory holds when milan_hf wrote it (and may replace).
OWNED_ENTRIES = (METADATA_FILE, DATASET_DIR, ORIGINAL_DIR)
#: Key of the metadata file saying how masks are stored (absent: uint8 masks, the old format).
MASK_STORAGE_KEY = "mask_storage"


def save_exemplars(
    exemplars: datasets.Dataset, output_dir: str | Path, *, overwrite: bool = False
) -> Path:
    """Write ``exemplars`` to ``output_dir`` atomically (temporary sibling, then rename).

    ``overwrite`` replaces an earlier exemplar set there, and only that: a directory that
    also holds other files is refused, naming them (nothing is touched).
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output {str(output_dir)!r} is a file, not a directory")
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{output_dir} already exists and is not empty; pass overwrite")
        require_own_output(output_dir, metadata_file=METADATA_FILE, owned=OWNED_ENTRIES,
                           what="exemplar output")  # fmt: skip
    remove_stale_staging(output_dir.parent, output_dir.name)
    metadata = exemplar_metadata(exemplars)
    metadata.pop(MASK_STORAGE_KEY, None)
    shape = mask_packing.mask_shape(exemplars.features)
    with staged_directory(output_dir) as staging:
        if shape is not None:
            # The packed table goes through a file inside the staging folder (removed with it).
            packing_file = staging / ".packing.arrow"
            packed = mask_packing.pack_masks(exemplars, shape, packing_file)
            packed.save_to_disk(str(staging / DATASET_DIR))
            del packed
            packing_file.unlink()
            metadata[MASK_STORAGE_KEY] = {"format": mask_packing.FORMAT, "shape": list(shape)}
        else:
            exemplars.save_to_disk(str(staging / DATASET_DIR))
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return output_dir


def load_exemplars(directory: str | Path) -> datasets.Dataset:
    """Read an exemplar set written by :func:`save_exemplars` / ``milan-hf exemplars``."""
    directory = Path(directory)
    metadata_file = directory / METADATA_FILE
    if not metadata_file.is_file() or not (directory / DATASET_DIR).is_dir():
        raise FileNotFoundError(
            f"{directory} is not a complete exemplar set (no {METADATA_FILE} or {DATASET_DIR}/); "
            "was the extraction interrupted? Run it again."
        )
    dataset = datasets.load_from_disk(str(directory / DATASET_DIR))
    metadata = json.loads(metadata_file.read_text())
    storage = metadata.pop(MASK_STORAGE_KEY, None)
    if storage is not None:
        if storage.get("format") != mask_packing.FORMAT:
            raise ValueError(
                f"{directory} stores masks as {storage.get('format')!r}; this version of "
                f"milan_hf reads {mask_packing.FORMAT!r} (upgrade milan_hf)"
            )
        dataset = mask_packing.unpack_masks(dataset, tuple(storage["shape"]))
    dataset.info.description = schema.metadata_description(metadata)
    return dataset


def export_original_layout(
    exemplars: datasets.Dataset, output_dir: str | Path, *, with_images: bool = False
) -> Path:
    """Write the original MILAN on-disk layout: per layer ``masks.npy`` uint8
    (units, k, 1, H, W), ``ids.csv``, ``activations.csv`` and optionally ``images.npy`` uint8
    (units, k, 3, H, W). Units are written in index order, one row per unit."""
    output_dir = Path(output_dir)
    if with_images and schema.IMAGES not in exemplars.column_names:
        exemplars = materialize_images(exemplars)
    with staged_directory(output_dir) as staging:
        for layer in dict.fromkeys(exemplars[schema.LAYER]):
            rows = exemplars.filter(
                lambda layer_name, wanted=layer: layer_name == wanted,
                input_columns=[schema.LAYER],
            )
            _write_layer(rows.sort(schema.UNIT), staging / layer, with_images)
    return output_dir


def _write_layer(rows: datasets.Dataset, folder: Path, with_images: bool) -> None:
    folder.mkdir(parents=True)
    first = np.asarray(rows[0][schema.MASKS], dtype=np.uint8)
    k, height, width = first.shape
    masks = np.lib.format.open_memmap(
        folder / "masks.npy", mode="w+", dtype=np.uint8, shape=(len(rows), k, 1, height, width)
    )
    images = None
    if with_images:
        images = np.lib.format.open_memmap(
            folder / "images.npy",
            mode="w+",
            dtype=np.uint8,
            shape=(len(rows), k, 3, height, width),
        )
    with (
        open(folder / "ids.csv", "w", newline="") as ids_file,
        open(folder / "activations.csv", "w", newline="") as activations_file,
    ):
        ids_writer, activations_writer = csv.writer(ids_file), csv.writer(activations_file)
        for position, row in enumerate(tqdm(rows, desc=f"export {folder.name}", leave=False)):
            masks[position, :, 0] = np.asarray(row[schema.MASKS], dtype=np.uint8)
            ids_writer.writerow(row[schema.IDS])
            activations_writer.writerow([f"{value:.6g}" for value in row[schema.ACTIVATIONS]])
            if images is not None:
                for slot, image in enumerate(row[schema.IMAGES]):
                    images[position, slot] = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    masks.flush()
    if images is not None:
        images.flush()


def push_exemplars_to_hub(
    exemplars: datasets.Dataset,
    repo_id: str,
    *,
    materialize: bool = True,
    private: bool = False,
    token: str | None = None,
) -> Any:
    """Push an exemplar set to the Hub as a parquet dataset with a card, images materialised
    by default (the ids alone are useless without the probe set)."""
    from .hub import push_dataset

    metadata = exemplar_metadata(exemplars)
    if materialize and schema.IMAGES not in exemplars.column_names:
        exemplars = materialize_images(exemplars)
    return push_dataset(
        exemplars, repo_id, exemplars_card(exemplars, metadata), private=private, token=token
    )


def exemplars_card(exemplars: datasets.Dataset, metadata: dict[str, Any]) -> str:
    """The dataset card of an exemplar set, from ``hub_cards/exemplars.md``."""
    from .hub_cards import render_card

    source = metadata.get("probe_source", {})
    return render_card(
        "exemplars",
        model=metadata.get("model", "a vision model"),
        num_units=len(exemplars),
        layers=", ".join(f"`{layer}`" for layer in metadata.get("layers", [])),
        k=metadata.get("k", schema.DEFAULT_K),
        quantile=metadata.get("quantile", schema.DEFAULT_QUANTILE),
        input_size="×".join(str(s) for s in metadata.get("input_size", [])),
        num_images=metadata.get("num_images", "?"),
        probe_source=source.get("id") or source.get("path") or source.get("kind", "unknown"),
    )
