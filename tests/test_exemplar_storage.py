"""Compact exemplar storage: bit-packed masks on disk, identical masks after loading."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from milan_hf import mask_packing, schema
from milan_hf.exemplar_storage import (
    DATASET_DIR,
    METADATA_FILE,
    export_original_layout,
    load_exemplars,
    push_exemplars_to_hub,
    save_exemplars,
)
from milan_hf.exemplars import exemplar_metadata, extract_exemplars
from tests.test_exemplars import TinyNet, write_images

INPUT_SIZE = 96


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> datasets.Dataset:
    probe = write_images(tmp_path_factory.mktemp("probe"), 24)
    return extract_exemplars(
        TinyNet(), ["conv1", "conv2"], str(probe), k=5, input_size=INPUT_SIZE, progress=False
    )


def assert_same_exemplars(loaded: datasets.Dataset, original: datasets.Dataset) -> None:
    assert loaded.features == original.features
    assert loaded.column_names == original.column_names
    for name in original.column_names:
        if name != schema.MASKS:
            assert loaded[name] == original[name], name
    # The Arrow column itself (what the report and the processor read): uint8 pixels.
    shape = mask_packing.mask_shape(original.features)
    got = mask_packing.masks_per_row(loaded.data.table.column(schema.MASKS), shape)
    want = mask_packing.masks_per_row(original.data.table.column(schema.MASKS), shape)
    assert len(got) == len(want)
    for got_masks, want_masks in zip(got, want):
        assert got_masks.dtype == np.uint8 and np.array_equal(got_masks, want_masks)


def test_saved_set_is_8x_smaller_with_identical_masks(tmp_path, extracted):
    assert sum(np.asarray(m).sum() for m in extracted[schema.MASKS][:3]) > 0  # not all empty
    save_exemplars(extracted, tmp_path / "compact")
    # Nothing but the set: the packing's intermediate file went with the staging folder.
    assert sorted(path.name for path in (tmp_path / "compact").iterdir()) == sorted(
        [DATASET_DIR, METADATA_FILE]
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["compact"]
    extracted.save_to_disk(str(tmp_path / "uint8"))  # the masks as they were stored before
    compact, full = (
        folder_bytes(tmp_path / "compact" / DATASET_DIR),
        folder_bytes(tmp_path / "uint8"),
    )
    assert full / compact >= 8, (full, compact)

    loaded = load_exemplars(tmp_path / "compact")
    assert_same_exemplars(loaded, extracted)
    assert exemplar_metadata(loaded) == exemplar_metadata(extracted)  # no storage detail leaks
    stored = json.loads((tmp_path / "compact" / METADATA_FILE).read_text())
    assert stored["mask_storage"] == {"format": "packbits+zlib", "shape": [INPUT_SIZE] * 2}

    # A loaded set saves again (no stale storage key) and round-trips again.
    save_exemplars(loaded, tmp_path / "again")
    assert_same_exemplars(load_exemplars(tmp_path / "again"), extracted)


def test_sets_in_the_old_uint8_layout_still_load(tmp_path, extracted):
    old = tmp_path / "old"
    extracted.save_to_disk(str(old / DATASET_DIR))
    (old / METADATA_FILE).write_text(json.dumps(exemplar_metadata(extracted)))
    assert_same_exemplars(load_exemplars(old), extracted)


def test_original_layout_export_of_a_loaded_set_writes_uint8_masks(tmp_path, extracted):
    save_exemplars(extracted, tmp_path / "compact")
    export_original_layout(load_exemplars(tmp_path / "compact"), tmp_path / "original")
    masks = np.load(tmp_path / "original" / "conv2" / "masks.npy")
    conv2 = extracted.filter(lambda layer: layer == "conv2", input_columns=[schema.LAYER])
    assert masks.dtype == np.uint8 and masks.shape == (6, 5, 1, INPUT_SIZE, INPUT_SIZE)
    assert np.array_equal(masks[:, :, 0], np.stack(conv2.with_format("numpy")[schema.MASKS]))


@pytest.mark.parametrize("shape", [(5, 7), (1, 1), (224, 224)])
def test_packing_round_trips_every_shape(shape):
    rng = np.random.default_rng(0)
    for count in (0, 1, 3):
        masks = (rng.random((count, *shape)) > 0.5).astype(np.uint8)
        unpacked = mask_packing.unpack_unit_masks(mask_packing.pack_unit_masks(masks), shape)
        assert unpacked.dtype == np.uint8 and np.array_equal(unpacked, masks)


def test_non_binary_masks_are_refused_with_the_value():
    with pytest.raises(ValueError, match="binary .* up to 255"):
        mask_packing.pack_unit_masks(np.full((2, 4, 4), 255, dtype=np.uint8))


def test_units_with_no_masks_and_varying_k_round_trip(tmp_path):
    size = 6
    rows = {name: [] for name in schema.exemplar_features(size)}
    for unit, k in enumerate([0, 3, 1, 2]):
        rows["layer"].append("layer")
        rows["unit"].append(unit)
        rows["ids"].append(list(range(k)))
        rows["activations"].append([1.0] * k)
        rows["masks"].append(np.eye(size, dtype=np.uint8)[None].repeat(k, axis=0))
        rows["threshold"].append(0.5)
        rows["dead"].append(k == 0)
    exemplars = datasets.Dataset.from_dict(rows, features=schema.exemplar_features(size))
    save_exemplars(exemplars, tmp_path / "out")
    assert_same_exemplars(load_exemplars(tmp_path / "out"), exemplars)


def test_an_unknown_storage_format_is_refused(tmp_path, extracted):
    save_exemplars(extracted.select(range(2)), tmp_path / "out")
    metadata_file = tmp_path / "out" / METADATA_FILE
    metadata = json.loads(metadata_file.read_text())
    metadata["mask_storage"]["format"] = "run-length"
    metadata_file.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="'run-length'"):
        load_exemplars(tmp_path / "out")


def test_a_loaded_set_pushes_plain_uint8_masks_to_the_hub(tmp_path, extracted, fake_hub):
    """The Hub copy needs no milan_hf: its parquet holds the masks as plain 0/1 arrays."""
    save_exemplars(extracted.select(range(3)), tmp_path / "compact")
    loaded = load_exemplars(tmp_path / "compact")
    push_exemplars_to_hub(loaded, "someone/compact-exemplars", materialize=False)
    (parquet,) = fake_hub.folder("someone/compact-exemplars").rglob("*.parquet")
    pushed = datasets.Dataset.from_parquet(str(parquet))
    assert mask_packing.PACKED_MASKS not in pushed.column_names
    assert pushed.features[schema.MASKS] == datasets.List(
        datasets.Array2D((INPUT_SIZE, INPUT_SIZE), "uint8")
    )
    for got, want in zip(pushed[schema.MASKS], extracted.select(range(3))[schema.MASKS]):
        assert np.array_equal(np.asarray(got, dtype=np.uint8), np.asarray(want, dtype=np.uint8))
