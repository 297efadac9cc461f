"""milan_hf.probe_images: every kind of probe source, image columns, unreadable images, re-opening
from a recorded source, conversion to RGB and fingerprints."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from milan_hf.probe_images import (
    ProbeImages,
    ProbeTensorDataset,
    load_probe_images,
    probe_fingerprint,
    probe_images_from_source,
    to_rgb,
)


def solid(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (6, 4), colour)


def colours_dataset(count: int, column: str = "image", split: str | None = None):
    images = [solid((10 * i, 0, 0)) for i in range(count)]
    return datasets.Dataset.from_dict({column: images, "label": list(range(count))}, split=split)


def red_of(probe: ProbeImages, index: int) -> int:
    return int(np.asarray(probe.open_image(index))[0, 0, 0])


def test_image_folder_is_recursive_sorted_and_ignores_other_files(tmp_path):
    (tmp_path / "b").mkdir()
    solid((30, 0, 0)).save(tmp_path / "b" / "z.png")
    solid((10, 0, 0)).save(tmp_path / "a.PNG")
    solid((20, 0, 0)).save(tmp_path / "b" / "c.jpeg", quality=100)
    (tmp_path / "notes.txt").write_text("not an image")
    probe = load_probe_images(tmp_path)
    assert len(probe) == 3 and probe.source["kind"] == "folder"
    assert [Path(probe.image_name(i)).name for i in range(3)] == ["a.PNG", "c.jpeg", "z.png"]
    assert [red_of(probe, i) for i in (0, 2)] == [10, 30]
    assert probe.source["num_images"] == 3 and probe.source["image_column"] == "image"


def test_dataset_dict_on_disk_defaults_to_validation_and_checks_the_split(tmp_path):
    splits = datasets.DatasetDict(
        {"train": colours_dataset(3), "validation": colours_dataset(2), "extra": colours_dataset(1)}
    )
    splits.save_to_disk(str(tmp_path / "disk"))
    assert len(load_probe_images(tmp_path / "disk")) == 2
    probe = load_probe_images(tmp_path / "disk", split="train")
    assert len(probe) == 3 and probe.source == {
        "kind": "disk",
        "path": str((tmp_path / "disk").resolve()),
        "split": "train",
        "image_column": "image",
        "num_images": 3,
    }
    with pytest.raises(ValueError, match=r"split 'tset' not in .*available: \['train'"):
        load_probe_images(tmp_path / "disk", split="tset")
    datasets.DatasetDict({"a": colours_dataset(1), "b": colours_dataset(1)}).save_to_disk(
        str(tmp_path / "ab")
    )
    with pytest.raises(ValueError, match=r"several splits \['a', 'b'\]: choose one"):
        load_probe_images(tmp_path / "ab")


def test_parquet_file_and_folder_of_parquet(tmp_path):
    colours_dataset(3).to_parquet(str(tmp_path / "one.parquet"))
    (tmp_path / "shards").mkdir()
    colours_dataset(2).to_parquet(str(tmp_path / "shards" / "0.parquet"))
    colours_dataset(4).to_parquet(str(tmp_path / "shards" / "1.parquet"))
    assert len(load_probe_images(tmp_path / "one.parquet")) == 3
    shards = load_probe_images(tmp_path / "shards")
    assert len(shards) == 6 and shards.source["kind"] == "parquet"
    assert red_of(shards, 3) == 10  # second shard's second image, in file order


def test_image_column_is_found_or_must_be_named():
    assert load_probe_images(colours_dataset(2, column="picture")).image_column == "picture"
    with pytest.raises(ValueError, match=r"image column 'photo' not found; columns: \['image'"):
        load_probe_images(colours_dataset(2), image_column="photo")
    numbers = datasets.Dataset.from_dict({"x": [1, 2]})
    with pytest.raises(ValueError, match=r"no image column in the probe set \(columns: \['x'\]"):
        load_probe_images(numbers)
    with pytest.raises(ValueError, match="has no images"):
        load_probe_images(colours_dataset(0))


def test_unreadable_images_raise_naming_the_file_and_are_skipped_by_the_loader(tmp_path):
    solid((10, 0, 0)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    probe = load_probe_images(tmp_path)
    with pytest.raises(OSError, match=r"cannot read image .*broken.png"):
        probe.open_image(0)
    rows = ProbeTensorDataset(probe, lambda image: torch.ones(3, 2, 2), input_size=(2, 2))
    pixels, index, ok, error = rows[0]
    assert (index, ok) == (0, False) and "broken.png" in error and pixels.abs().sum() == 0
    pixels, index, ok, error = rows[1]
    assert (index, ok, error) == (1, True, "") and pixels.sum() == 12


def test_reopening_from_the_recorded_source(tmp_path):
    folder = tmp_path / "probe"
    folder.mkdir()
    for i in range(3):
        solid((10 * i, 0, 0)).save(folder / f"{i}.png")
    source = load_probe_images(folder).source
    again = probe_images_from_source(source)
    assert len(again) == 3 and red_of(again, 2) == 20
    os.remove(folder / "1.png")
    with pytest.raises(ValueError, match=r"now has 2 images but the exemplars were extracted"):
        probe_images_from_source(source)
    with pytest.raises(ValueError, match="in-memory dataset: pass the probe images"):
        probe_images_from_source(load_probe_images(colours_dataset(2)).source)


def test_hub_id_that_cannot_be_loaded_offline_is_named():
    with pytest.raises(FileNotFoundError, match=r"'nobody/no-such-probe-set' is not a local path"):
        load_probe_images("nobody/no-such-probe-set")
    with pytest.raises(FileNotFoundError, match="probe images not found: ./missing"):
        load_probe_images("./missing")


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "L", "CMYK", "1"])
def test_every_common_mode_becomes_rgb(mode):
    image = to_rgb(Image.new("RGB", (4, 3), (200, 200, 200)).convert(mode))
    assert image.mode == "RGB" and image.size == (4, 3)
    assert np.asarray(image).mean() > 150  # light grey stays light


def test_sixteen_bit_big_endian_and_float_nan_are_scaled():
    big_endian = Image.frombytes("I;16B", (2, 1), np.array([0, 65535], ">u2").tobytes())
    assert np.asarray(to_rgb(big_endian))[0, :, 0].tolist() == [0, 255]
    with_nan = Image.fromarray(np.array([[np.nan, 0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(with_nan))[0, :, 0].tolist() == [0, 0, 128, 255]
    constant = Image.fromarray(np.full((2, 2), 70000, dtype=np.int32))
    assert np.asarray(to_rgb(constant)).max() == 0  # no range to scale: black, not a crash


def test_fingerprint_follows_content_not_location(tmp_path):
    same = probe_fingerprint(load_probe_images(colours_dataset(3)))
    assert probe_fingerprint(load_probe_images(colours_dataset(3))) == same
    other = datasets.Dataset.from_dict({"image": [solid((1, 2, 3))] * 3, "label": [0, 1, 2]})
    assert probe_fingerprint(load_probe_images(other))["content"] != same["content"]

    colours_dataset(3).to_parquet(str(tmp_path / "set.parquet"))
    before = probe_fingerprint(load_probe_images(tmp_path / "set.parquet"))
    other.to_parquet(str(tmp_path / "set.parquet"))  # rewritten in place
    after = probe_fingerprint(load_probe_images(tmp_path / "set.parquet"))
    assert after["content"] != before["content"] and after["num_images"] == 3

    colours_dataset(2).save_to_disk(str(tmp_path / "disk"))
    on_disk = probe_fingerprint(load_probe_images(tmp_path / "disk"))
    assert probe_fingerprint(load_probe_images(tmp_path / "disk")) == on_disk
