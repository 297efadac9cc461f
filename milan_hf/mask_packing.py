"""Compact storage of an exemplar set's binary masks: bit-packed, then deflated.

A unit's k masks of H×W bytes (0/1) become one ``binary`` value: ``np.packbits`` of each mask
flattened (8 pixels a byte, each mask padded to whole bytes) and ``zlib`` over the k packed
masks (regions are contiguous, so the bits compress well). Unpacking gives back the identical
uint8 arrays. On load the masks are rebuilt as the schema's ``List(Array2D)`` column in a
memory-mapped temporary file, so a large set costs page cache, not resident memory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib

import datasets
import numpy as np
import pyarrow as pa
from datasets.features.features import Array2DExtensionType
from datasets.table import InMemoryTable

from . import schema

#: Name of the packed column that replaces ``masks`` on disk, and of the storage format.
PACKED_MASKS = "masks_packed"
FORMAT = "packbits+zlib"
#: Rows per Arrow chunk when rebuilding masks: keeps every list offset inside int32.
_ROWS_PER_CHUNK = 128


def pack_unit_masks(masks: np.ndarray) -> bytes:
    """One unit's (k, H, W) 0/1 masks as deflated packed bits."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (k, H, W), got {masks.shape}")
    if masks.size and masks.max() > 1:
        raise ValueError(f"masks must be binary (0/1), got values up to {masks.max()}")
    pixels = masks.shape[1] * masks.shape[2]
    packed = np.packbits(masks.reshape(len(masks), pixels).astype(bool), axis=1)
    return zlib.compress(packed.tobytes(), 6)


def unpack_unit_masks(blob: bytes, shape: tuple[int, int]) -> np.ndarray:
    """The (k, H, W) uint8 masks that :func:`pack_unit_masks` packed, for masks of ``shape``."""
    height, width = shape
    packed = np.frombuffer(zlib.decompress(blob), dtype=np.uint8)
    row_bytes = -(-height * width // 8)
    if packed.size % row_bytes:
        raise ValueError(f"packed masks of {packed.size} bytes do not hold {shape} masks")
    bits = np.unpackbits(packed.reshape(-1, row_bytes), axis=1, count=height * width)
    return bits.reshape(-1, height, width)


def mask_shape(features: datasets.Features) -> tuple[int, int] | None:
    """(H, W) when ``masks`` is the schema's ``List(Array2D((H, W), "uint8"))``, else None."""
    inner = getattr(features.get(schema.MASKS), "feature", None)
    if isinstance(inner, datasets.Array2D) and inner.dtype == "uint8" and len(inner.shape) == 2:
        return tuple(inner.shape)  # type: ignore[return-value]
    return None


def pack_masks(
    exemplars: datasets.Dataset, shape: tuple[int, int], cache_file: str | os.PathLike
) -> datasets.Dataset:
    """``exemplars`` with its ``masks`` column replaced by :data:`PACKED_MASKS`, written to
    ``cache_file`` (an Arrow file: other columns, e.g. materialised images, can be large)."""
    features = datasets.Features(
        {
            (PACKED_MASKS if name == schema.MASKS else name): (
                datasets.Value("binary") if name == schema.MASKS else feature
            )
            for name, feature in exemplars.features.items()
        }
    )

    def pack_batch(batch: pa.Table) -> pa.Table:
        blobs = [pack_unit_masks(masks) for masks in masks_per_row(batch[schema.MASKS], shape)]
        position = batch.schema.get_field_index(schema.MASKS)
        return batch.set_column(position, PACKED_MASKS, pa.array(blobs, type=pa.binary()))

    return (
        exemplars.with_format("arrow")
        .map(
            pack_batch,
            batched=True,
            batch_size=64,
            features=features,
            cache_file_name=str(cache_file),
            load_from_cache_file=False,
            desc="Packing masks",
        )
        .with_format(None)
    )


def unpack_masks(packed: datasets.Dataset, shape: tuple[int, int]) -> datasets.Dataset:
    """Inverse of :func:`pack_masks`: the exemplar set with its ``masks`` column back."""
    table = packed.data.table
    blobs = table.column(PACKED_MASKS)
    row_bytes = -(-shape[0] * shape[1] // 8)
    # First pass: how many masks each unit holds (decompressing is cheap next to unpacking).
    counts = np.array(
        [len(zlib.decompress(blob.as_py())) // row_bytes for blob in blobs], dtype=np.int64
    )
    starts = np.concatenate([[0], np.cumsum(counts)])
    # One temporary file (already unlinked) holds every mask; Arrow reads it without a copy.
    pixels = np.memmap(
        tempfile.TemporaryFile(), dtype=np.uint8, mode="w+", shape=(max(1, starts[-1]), *shape)
    )
    for row, blob in enumerate(blobs):
        pixels[starts[row] : starts[row + 1]] = unpack_unit_masks(blob.as_py(), shape)
    chunks = [
        _masks_chunk(pixels[starts[first] : starts[last]], counts[first:last], shape)
        for first, last in _chunk_bounds(len(counts))
    ]
    masks_type = pa.list_(Array2DExtensionType(shape, "uint8"))
    column = pa.chunked_array(chunks, type=masks_type)
    table = table.set_column(table.schema.get_field_index(PACKED_MASKS), schema.MASKS, column)
    features = datasets.Features(
        {
            (schema.MASKS if name == PACKED_MASKS else name): (
                datasets.List(datasets.Array2D(shape, "uint8")) if name == PACKED_MASKS else feature
            )
            for name, feature in packed.features.items()
        }
    )
    info = packed.info.copy()
    info.features = features
    fingerprint = hashlib.sha256(f"{packed._fingerprint}:unpacked".encode()).hexdigest()[:16]
    return datasets.Dataset(
        InMemoryTable(table.cast(features.arrow_schema)), info=info, fingerprint=fingerprint
    )


def _chunk_bounds(rows: int) -> list[tuple[int, int]]:
    return [
        (first, min(first + _ROWS_PER_CHUNK, rows)) for first in range(0, rows, _ROWS_PER_CHUNK)
    ]


def _masks_chunk(pixels: np.ndarray, counts: np.ndarray, shape: tuple[int, int]) -> pa.Array:
    """The ``List(Array2D)`` Arrow array of some rows' masks, over ``pixels`` without a copy."""
    height, width = shape
    flat = np.ascontiguousarray(pixels).reshape(-1)
    values = pa.Array.from_buffers(pa.uint8(), flat.size, [None, pa.py_buffer(flat)])
    rows_of_pixels = pa.ListArray.from_arrays(
        pa.array(np.arange(0, len(pixels) * height + 1, dtype=np.int32) * width), values
    )
    mask_arrays = pa.ListArray.from_arrays(
        pa.array(np.arange(0, len(pixels) + 1, dtype=np.int32) * height), rows_of_pixels
    )
    extension = pa.ExtensionArray.from_storage(Array2DExtensionType(shape, "uint8"), mask_arrays)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), extension)


def masks_per_row(column: pa.ChunkedArray | pa.Array, shape: tuple[int, int]) -> list[np.ndarray]:
    """Split an Arrow ``masks`` column into one (k, H, W) uint8 array per row, without copies."""
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = lists.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    items = lists.flatten()
    storage = items.storage if isinstance(items, pa.ExtensionArray) else items
    pixels = storage.flatten().flatten().to_numpy(zero_copy_only=False)
    stacked = pixels.reshape(-1, *shape)
    if len(stacked) != lengths.sum():
        raise ValueError(
            f"masks hold {len(stacked)} arrays of shape {shape} for {lengths.sum()} images"
        )
    return np.split(stacked, np.cumsum(lengths)[:-1])
