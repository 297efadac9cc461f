"""MILANNOTATIONS loader: every config and split, alignment, parquet round trip, bad input, push."""

from __future__ import annotations

import logging
import math
import shutil
import zipfile
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pytest

from milan_hf import milannotations_hub, schema
from milan_hf.milannotations import (
    GENERALIZATION_SPLITS,
    MILANNOTATIONS_GROUPINGS,
    MILANNOTATIONS_SETS,
    MilannotationsBuilder,
    load_milannotations,
    release_url,
)

try:  # tests/ is a package in some checkouts and a plain folder in others
    from tests import milannotations_fixture as fixture
except ImportError:
    import milannotations_fixture as fixture

IMAGENET_SOURCED = ("alexnet/imagenet", "resnet152/imagenet", "dino_vits8/imagenet")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return fixture.write_milannotations(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    return fixture.write_fake_imagenet(tmp_path_factory.mktemp("imagenet") / "val")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def expected_features(with_images: bool) -> datasets.Features:
    features = schema.exemplar_features(
        fixture.MASK_SIZE, with_images=with_images, with_descriptions=True
    )
    features[schema.SOURCE] = datasets.Value("string")
    return features


@pytest.mark.parametrize("config", MilannotationsBuilder.BUILDER_CONFIGS, ids=lambda c: c.name)
def test_every_config_loads_with_right_counts_and_schema(config, release, cache):
    splits = load_milannotations(config.name, data_dir=release, cache_dir=cache)

    if config.held_out:
        assert splits["train"].num_rows == fixture.UNITS_PER_SET * (
            len(config.sets) - len(config.held_out)
        )
        assert splits["test"].num_rows == fixture.UNITS_PER_SET * len(config.held_out)
        assert set(splits["test"][schema.SOURCE]) == set(config.held_out)
        assert set(splits["train"][schema.SOURCE]) == set(config.sets) - set(config.held_out)
    else:
        # Within-network: int(0.1 * 12) = 1 unit of every set held out.
        assert splits["train"].num_rows == (fixture.UNITS_PER_SET - 1) * len(config.sets)
        assert splits["test"].num_rows == len(config.sets)
        assert set(splits["test"][schema.SOURCE]) == set(config.sets)
    with_images = any(s not in IMAGENET_SOURCED for s in config.sets)
    for split in splits.values():
        assert split.features == expected_features(with_images)
        assert all(len(texts) == 3 for texts in split[schema.DESCRIPTIONS])


def test_config_tables_follow_the_original():
    assert MILANNOTATIONS_GROUPINGS["base"] == MILANNOTATIONS_SETS[:6]
    assert MILANNOTATIONS_GROUPINGS["cls"] == (
        "alexnet/imagenet",
        "alexnet/places365",
        "resnet152/imagenet",
        "resnet152/places365",
    )
    assert MILANNOTATIONS_GROUPINGS["not-biggan-places365"] == MILANNOTATIONS_SETS[:5]
    assert release_url("dino_vits8/imagenet") == (
        "https://milan.csail.mit.edu/data/dino_vits8-imagenet.zip"
    )
    assert GENERALIZATION_SPLITS["across-arch-base-to-dino_vits8"] == (
        MILANNOTATIONS_SETS,
        ("dino_vits8/imagenet",),
    )
    assert len([n for n in GENERALIZATION_SPLITS if n.startswith("leave-one-out-")]) == 6


def test_rows_match_the_files_and_images_are_aligned(release, imagenet, cache):
    rows = load_milannotations("all", data_dir=release, imagenet_dir=imagenet, cache_dir=cache)
    rows = datasets.concatenate_datasets([rows["train"], rows["test"]])
    assert rows.num_rows == fixture.UNITS_PER_SET * len(MILANNOTATIONS_SETS)
    n_imagenet = len(fixture.IMAGENET_CLASSES) * fixture.IMAGES_PER_CLASS

    for row in rows:
        layer_dir = release / row[schema.SOURCE] / row[schema.LAYER]
        unit_numbers = (
            np.load(layer_dir / "units.npy")
            if (layer_dir / "units.npy").exists()
            else np.arange(len(np.load(layer_dir / "masks.npy")))
        )
        file_row = int(np.flatnonzero(unit_numbers == row[schema.UNIT])[0])
        masks = np.load(layer_dir / "masks.npy")[file_row, :, 0]
        np.testing.assert_array_equal(np.array(row[schema.MASKS]), masks)
        ids = np.loadtxt(layer_dir / "ids.csv", delimiter=",", dtype=int, ndmin=2)[file_row]
        assert row[schema.IDS] == ids.tolist()
        if (layer_dir / "activations.csv").exists():
            activations = np.loadtxt(layer_dir / "activations.csv", delimiter=",", ndmin=2)
            np.testing.assert_allclose(row[schema.ACTIVATIONS], activations[file_row], rtol=1e-6)
        else:
            assert len(row[schema.ACTIVATIONS]) == fixture.K
            assert all(math.isnan(a) for a in row[schema.ACTIVATIONS])
        assert math.isnan(row[schema.THRESHOLD]) and row[schema.DEAD] is False
        assert row[schema.DESCRIPTIONS] == [
            fixture.description(row[schema.SOURCE], row[schema.LAYER], row[schema.UNIT], i)
            for i in range(3)
        ]

        images = [np.array(image) for image in row[schema.IMAGES]]
        assert [image.shape for image in images] == [
            (fixture.MASK_SIZE, fixture.MASK_SIZE, 3)
        ] * fixture.K
        if row[schema.SOURCE] in IMAGENET_SOURCED:
            # ImageFolder order; Resize+CenterCrop keeps only the centre colour (a squash
            # would pull in the black side bands).
            for image, image_id in zip(images, row[schema.IDS]):
                assert 0 <= image_id < n_imagenet
                assert np.abs(image.astype(int) - fixture.imagenet_colour(image_id)).max() <= 8
        else:
            stored = np.load(layer_dir / "images.npy")[file_row].transpose(0, 2, 3, 1)
            np.testing.assert_array_equal(np.stack(images), stored)


def test_units_are_kept_in_file_order_truncated_to_three(release, cache):
    rows = load_milannotations("biggan/places365", data_dir=release, split="all", cache_dir=cache)
    # Rows 3 and 9 have two descriptions, the last row none: twelve of fifteen units remain.
    expected = [("layer0", u) for u in (0, 1, 2, 4, 5, 6)] + [
        ("layer4", 3 * i + 1) for i in (0, 1, 3, 4, 5, 6)
    ]
    assert sorted(zip(rows[schema.LAYER], rows[schema.UNIT])) == sorted(expected)
    train = load_milannotations(
        "biggan/places365", data_dir=release, split="train", cache_dir=cache
    )
    order = [expected.index(key) for key in zip(train[schema.LAYER], train[schema.UNIT])]
    assert order == sorted(order)


def test_within_network_split_is_seeded_per_set(release, cache):
    alone = load_milannotations("alexnet/imagenet", data_dir=release, cache_dir=cache)
    grouped = load_milannotations("base", data_dir=release, split="test", cache_dir=cache)
    held = {(r[schema.LAYER], r[schema.UNIT]) for r in alone["test"]}
    in_group = {
        (r[schema.LAYER], r[schema.UNIT]) for r in grouped if r[schema.SOURCE] == "alexnet/imagenet"
    }
    assert held == in_group
    train = {(r[schema.LAYER], r[schema.UNIT]) for r in alone["train"]}
    assert not held & train and len(held | train) == fixture.UNITS_PER_SET

    by_seed = [
        tuple(
            load_milannotations(
                "alexnet/imagenet", data_dir=release, split="test", seed=seed, cache_dir=cache
            )[schema.UNIT]
        )
        for seed in range(4)
    ]
    assert len(set(by_seed)) > 1
    again = load_milannotations(
        "alexnet/imagenet", data_dir=release, split="test", seed=0, cache_dir=cache
    )
    assert tuple(again[schema.UNIT]) == by_seed[0]


def test_published_zips_load_like_folders(release, tmp_path, cache):
    zips = fixture.write_milannotations_zips(tmp_path / "zips", ("alexnet/imagenet",))
    assert (zips / "alexnet-imagenet.zip").is_file()
    from_zip = load_milannotations("alexnet/imagenet", data_dir=zips, split="all", cache_dir=cache)
    from_folder = load_milannotations(
        "alexnet/imagenet", data_dir=release, split="all", cache_dir=cache
    )
    assert from_zip.features == from_folder.features
    for column in (schema.LAYER, schema.UNIT, schema.IDS, schema.DESCRIPTIONS, schema.MASKS):
        assert from_zip[column] == from_folder[column]


def test_discovered_sets_split_by_network_name(tmp_path, cache):
    corpus = tmp_path / "probe"
    for seed, name in enumerate(("tinycnn_a/probeworld", "tinycnn_b/probeworld")):
        fixture.write_set(corpus, name, seed, mask_size=12)

    everything = load_milannotations("all", data_dir=corpus, split="all", cache_dir=cache)
    assert everything.num_rows == 2 * fixture.UNITS_PER_SET
    assert everything.features[schema.MASKS].feature.shape == (12, 12)
    assert schema.IMAGES in everything.features

    across = load_milannotations("all", data_dir=corpus, held_out=["tinycnn_b"], cache_dir=cache)
    assert set(across["train"][schema.SOURCE]) == {"tinycnn_a/probeworld"}
    assert set(across["test"][schema.SOURCE]) == {"tinycnn_b/probeworld"}
    assert across["test"].num_rows == fixture.UNITS_PER_SET

    one = load_milannotations("not-tinycnn_a", data_dir=corpus, split="all", cache_dir=cache)
    assert set(one[schema.SOURCE]) == {"tinycnn_b/probeworld"}
    by_network = load_milannotations("tinycnn_a", data_dir=corpus, cache_dir=cache)
    assert by_network["train"].num_rows == fixture.UNITS_PER_SET - 1

    with pytest.raises(ValueError, match="some but not all"):
        load_milannotations("all", data_dir=corpus, held_out=["probeworld"], cache_dir=cache)
    with pytest.raises(ValueError, match="unknown MILANNOTATIONS name 'vgg16'"):
        load_milannotations("vgg16", data_dir=corpus, cache_dir=cache)


def test_imagenet_sets_without_imagenet_dir_warn_once(release, cache, caplog):
    with caplog.at_level(logging.WARNING, logger="milan_hf.milannotations"):
        rows = load_milannotations("imagenet", data_dir=release, split="all", cache_dir=cache)
    warnings = [r for r in caplog.records if "ship no images" in r.getMessage()]
    assert len(warnings) == 1
    assert "alexnet/imagenet, resnet152/imagenet" in warnings[0].getMessage()
    # biggan/imagenet ships images.npy, so the column exists and is empty for the others.
    for source, images in zip(rows[schema.SOURCE], rows[schema.IMAGES]):
        assert (images is None) == (source != "biggan/imagenet")

    alone = load_milannotations("resnet152/imagenet", data_dir=release, cache_dir=cache)
    assert schema.IMAGES not in alone["train"].features


def test_imagenet_val_inside_data_dir_is_used_by_default(tmp_path, cache):
    data_dir = fixture.write_milannotations(tmp_path / "data", ("alexnet/imagenet",))
    fixture.write_fake_imagenet(data_dir / "imagenet" / "val")
    rows = load_milannotations("alexnet/imagenet", data_dir=data_dir, split="test", cache_dir=cache)
    assert all(images is not None for images in rows[schema.IMAGES])


def test_parquet_round_trip_keeps_types(release, imagenet, cache, tmp_path):
    rows = load_milannotations(
        "cls", data_dir=release, imagenet_dir=imagenet, split="test", cache_dir=cache
    )
    rows.to_parquet(tmp_path / "cls.parquet")
    again = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "cls.parquet"),
        split="train",
        cache_dir=str(tmp_path / "parquet-cache"),
    )
    assert again.features == rows.features
    for before, after in zip(rows, again):
        np.testing.assert_array_equal(np.array(after[schema.MASKS]), np.array(before[schema.MASKS]))
        np.testing.assert_array_equal(
            np.stack([np.array(i) for i in after[schema.IMAGES]]),
            np.stack([np.array(i) for i in before[schema.IMAGES]]),
        )
        assert after[schema.DESCRIPTIONS] == before[schema.DESCRIPTIONS]
        assert after[schema.SOURCE] == before[schema.SOURCE]


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def one_set(tmp_path) -> Path:
    return fixture.write_milannotations(tmp_path / "data", ("alexnet/imagenet",))


def test_missing_annotations_csv_names_the_file(one_set, cache):
    (one_set / "alexnet/imagenet/annotations.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"alexnet/imagenet/annotations\.csv"):
        load_milannotations("alexnet/imagenet", data_dir=one_set, cache_dir=cache)


def test_masks_and_ids_disagreeing_names_the_file(one_set, cache):
    ids_file = one_set / "alexnet/imagenet/conv5/ids.csv"
    ids_file.write_text("".join(ids_file.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match=r"conv5/ids\.csv: lists 7 units but .*masks\.npy"):
        load_milannotations("alexnet/imagenet", data_dir=one_set, cache_dir=cache)


def test_annotated_unit_without_masks_names_the_file(one_set, cache):
    with (one_set / "alexnet/imagenet/annotations.csv").open("a") as handle:
        handle.write("conv1,99,a unit that has no masks\n")
    with pytest.raises(ValueError, match=r"annotations\.csv: unit 99 of layer 'conv1' has no"):
        load_milannotations("alexnet/imagenet", data_dir=one_set, cache_dir=cache)


def test_offline_download_names_the_url_and_data_dir(cache):
    with pytest.raises(ConnectionError, match=r"alexnet-imagenet\.zip.*data_dir="):
        load_milannotations("alexnet/imagenet", cache_dir=cache)


def test_missing_set_in_data_dir_names_the_expected_paths(one_set, cache):
    with pytest.raises(ValueError, match="unknown MILANNOTATIONS name 'base'"):
        load_milannotations("base", data_dir=one_set, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="across-task-cls-to-gen"):
        load_milannotations("across-task-cls-to-gen", data_dir=one_set, cache_dir=cache)


def test_imagenet_id_out_of_range_names_the_ids_file(one_set, tmp_path, cache):
    small = tmp_path / "val"
    small.mkdir()
    shutil.copytree(
        fixture.write_fake_imagenet(tmp_path / "full") / fixture.IMAGENET_CLASSES[0], small / "n0"
    )
    with pytest.raises(ValueError, match=r"ids\.csv: image id \d+ is outside the 4 images"):
        load_milannotations(
            "alexnet/imagenet", data_dir=one_set, imagenet_dir=small, cache_dir=cache
        )


# ---------------------------------------------------------------------------- push


def test_push_uploads_parquet_configs_and_card(release, cache, tmp_path, fake_hub):
    args = ["org/milannotations", "--data-dir", str(release), "--cache-dir", str(cache)]
    assert milannotations_hub.main(args) == 0

    (create_repo,) = fake_hub.calls_to("create_repo")
    assert create_repo["repo_id"] == "org/milannotations"
    assert create_repo["repo_type"] == "dataset"
    (upload_folder,) = fake_hub.calls_to("upload_folder")
    assert upload_folder["repo_id"] == "org/milannotations"
    assert upload_folder["repo_type"] == "dataset"
    uploaded = fake_hub.folder("org/milannotations")
    expected_files = {"README.md"} | {
        f"data/{s.replace('/', '-')}/{split}-00000-of-00001.parquet"
        for s in MILANNOTATIONS_SETS
        for split in ("train", "test")
    }
    assert {p.relative_to(uploaded).as_posix() for p in uploaded.rglob("*.*")} == expected_files

    card = huggingface_hub.DatasetCard.load(uploaded / "README.md")
    configs = {c["config_name"]: c for c in card.data.configs}
    expected_configs = (
        {s.replace("/", "-") for s in MILANNOTATIONS_SETS}
        | set(MILANNOTATIONS_GROUPINGS)
        | set(GENERALIZATION_SPLITS)
    )
    assert set(configs) == expected_configs
    assert configs["base"].get("default") is True
    assert "Natural Language Descriptions of Deep Visual Features" in card.text
    assert (
        "| `alexnet-imagenet` | `alexnet-imagenet` | 90% / 10% of each set's units |" in card.text
    )
    assert "| test on `dino_vits8-imagenet`, train on the rest |" in card.text
    assert card.data.license == "other"

    # A config resolves, through its data_files, to the right rows with the loader's schema.
    def data_files(config: str) -> dict[str, list[str]]:
        files = {}
        for entry in configs[config]["data_files"]:
            patterns = [entry["path"]] if isinstance(entry["path"], str) else entry["path"]
            files[entry["split"]] = [str(p) for pat in patterns for p in uploaded.glob(pat)]
        return files

    for config, train_rows, test_rows in (
        ("across-task-cls-to-gen", 4 * fixture.UNITS_PER_SET, 2 * fixture.UNITS_PER_SET),
        ("cls", 4 * (fixture.UNITS_PER_SET - 1), 4),
    ):
        rows = datasets.load_dataset(
            "parquet", data_files=data_files(config), cache_dir=str(tmp_path / "pq")
        )
        assert (rows["train"].num_rows, rows["test"].num_rows) == (train_rows, test_rows)
        assert rows["train"].features == expected_features(with_images=True)
    gen = datasets.load_dataset(
        "parquet", data_files=data_files("gen"), split="test", cache_dir=str(tmp_path / "pq")
    )
    assert all(images is not None for images in gen[schema.IMAGES])


def test_export_refuses_to_overwrite(release, cache, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="out"):
        milannotations_hub.export_milannotations("org/x", tmp_path / "out", data_dir=str(release))


def test_edited_release_is_prepared_again(one_set, cache):
    before = load_milannotations("alexnet/imagenet", data_dir=one_set, split="all", cache_dir=cache)
    annotations = one_set / "alexnet/imagenet/annotations.csv"
    annotations.write_text(annotations.read_text().replace("description 0", "edited text"))
    after = load_milannotations("alexnet/imagenet", data_dir=one_set, split="all", cache_dir=cache)
    assert before[0][schema.DESCRIPTIONS][0].endswith("description 0")
    assert after[0][schema.DESCRIPTIONS][0].endswith("edited text")


def test_nested_zip_of_a_discovered_set(tmp_path, cache):
    staging = tmp_path / "staging"
    fixture.write_set(staging, "tinycnn/probeworld", seed=3)
    (tmp_path / "corpus/tinycnn").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "corpus/tinycnn/probeworld.zip", "w") as archive:
        for file in sorted((staging / "tinycnn").rglob("*")):
            archive.write(file, file.relative_to(staging / "tinycnn").as_posix())
    rows = load_milannotations("all", data_dir=tmp_path / "corpus", split="all", cache_dir=cache)
    assert set(rows[schema.SOURCE]) == {"tinycnn/probeworld"}
    assert rows.num_rows == fixture.UNITS_PER_SET
