"""Hostile and careless use of the output side (issue 11): nothing a user wrote is lost, resumed
runs never give stale results, and bad output paths get one line, not a traceback."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from milan_hf import schema
from milan_hf.cli import main as cli_main
from milan_hf.describer import describe
from milan_hf.exemplar_storage import load_exemplars, save_exemplars
from milan_hf.exemplars import extract_exemplars
from milan_hf.run_fingerprint import model_fingerprint
from milan_hf.vision_models import VisionModel, load_vision_model
from tests.captioner_fixtures import single_thread  # noqa: F401  (fixture)
from tests.tiny_models import TinyNet

NUM_BEAMS = 2


# One thread: on a busy 2-core machine two threads spin against each other.
pytestmark = pytest.mark.usefixtures("single_thread")


def write_images(folder: Path, count: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return folder


@pytest.fixture
def images(tmp_path) -> Path:
    return write_images(tmp_path / "images")


def tiny_describe(images, output_dir, model=None, layers=("conv1",), **kwargs):
    settings = dict(k=2, num_beams=NUM_BEAMS, input_size=32, batch_size=8, units=1,
                    progress=False)  # fmt: skip
    return describe(model or TinyNet(), list(layers), images, output_dir=output_dir,
                    **{**settings, **kwargs})  # fmt: skip


def error_line(capsys) -> str:
    """The one error line the command printed (progress bars aside), never a traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("milan-hf ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- overwrite replaces only what milan_hf wrote ---------------------------------------------


def test_exemplars_overwrite_keeps_a_users_files(tmp_path, images, capsys):
    output = tmp_path / "out"
    exemplars = extract_exemplars(TinyNet(), ["conv1"], str(images), k=2, input_size=32,
                                  progress=False)  # fmt: skip
    save_exemplars(exemplars, output)
    (output / "notes.txt").write_text("my notes")
    (output / "mine").mkdir()
    (output / "mine" / "data.txt").write_text("mine")
    before = tree(output)
    command = ["exemplars", "--model", "test_efficientnet", "--layers", "blocks.1", "--images",
               str(images), "--output", str(output), "--k", "2", "--overwrite"]  # fmt: skip
    capsys.readouterr()
    assert cli_main(command) == 2
    error = error_line(capsys)
    assert "notes.txt" in error and "mine/" in error
    assert tree(output) == before  # nothing touched
    with pytest.raises(FileExistsError, match="notes.txt"):  # the Python API: the same rule
        save_exemplars(exemplars, output, overwrite=True)

    # A directory milan_hf did not write at all (no metadata file) is refused too.
    photos = write_images(tmp_path / "photos", count=2)
    with pytest.raises(FileExistsError, match="milan_hf did not write it"):
        save_exemplars(exemplars, photos, overwrite=True)
    assert sorted(p.name for p in photos.iterdir()) == ["0.png", "1.png"]

    # Only its own files there: overwrite replaces them.
    (output / "notes.txt").unlink()
    (output / "mine" / "data.txt").unlink()
    (output / "mine").rmdir()
    save_exemplars(exemplars.select([0]), output, overwrite=True)
    assert len(load_exemplars(output)) == 1


def test_describe_overwrite_keeps_a_users_thumbs_and_index(tmp_path, images):
    output = tmp_path / "out"
    tiny_describe(images, output)
    assert (output / "index.html").is_file()

    (output / "thumbs" / "mine").mkdir()
    (output / "thumbs" / "mine" / "photo.jpg").write_bytes(b"my photo")
    with pytest.raises(FileExistsError, match="thumbs/mine/"):
        tiny_describe(images, output, k=3, overwrite=True)
    assert (output / "thumbs" / "mine" / "photo.jpg").read_bytes() == b"my photo"
    (output / "thumbs" / "mine" / "photo.jpg").unlink()
    (output / "thumbs" / "mine").rmdir()

    (output / "index.html").write_text("<p>my own page</p>")
    with pytest.raises(FileExistsError, match="index.html"):  # replacing the run
        tiny_describe(images, output, k=3, overwrite=True)
    with pytest.raises(FileExistsError, match="index.html"):  # resuming it with another layer
        tiny_describe(images, output, layers=("conv1", "conv2"))
    assert (output / "index.html").read_text() == "<p>my own page</p>"
    (output / "index.html").unlink()

    (output / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        tiny_describe(images, output, k=3, overwrite=True)
    (output / "notes.txt").unlink()

    # Its own report and results only: overwrite replaces them.
    assert len(tiny_describe(images, output, k=3, overwrite=True)) == 1
    assert (output / "index.html").is_file()


# --- resuming never reuses results of other inputs -----------------------------------------------


def test_resume_notices_probe_images_changed_in_place(tmp_path, images):
    output = tmp_path / "out"
    first = tiny_describe(images, output)
    for path in images.iterdir():  # copied or touched, same contents: still the same run
        os.utime(path, (1, 1))
    assert tiny_describe(images, output).to_list() == first.to_list()
    # Same names, same count, other pixels.
    write_images(images, seed=1)
    with pytest.raises(FileExistsError, match="different: images"):
        tiny_describe(images, output)
    again = tiny_describe(images, output, overwrite=True)
    assert again["layer"] == first["layer"]


def test_resume_notices_other_random_weights(tmp_path, images, monkeypatch):
    """A model named by its timm name without pretrained weights: the fingerprint holds the
    weights themselves, so two differently initialised models never share a run."""
    vision_model = load_vision_model("test_efficientnet", input_size=32)
    same = model_fingerprint("test_efficientnet", vision_model, None)
    with torch.no_grad():
        next(vision_model.module.parameters()).add_(1.0)
    assert model_fingerprint("test_efficientnet", vision_model, None) != same

    import milan_hf.exemplars as exemplars_module

    real_load = exemplars_module.load_vision_model
    offsets = iter([0.0, 0.5])

    def differently_initialised(model, **kwargs):
        loaded = real_load(model, **kwargs)
        if isinstance(model, VisionModel):  # already resolved: passes through
            return loaded
        with torch.no_grad():
            next(loaded.module.parameters()).add_(next(offsets))
        return loaded

    monkeypatch.setattr(exemplars_module, "load_vision_model", differently_initialised)
    output = tmp_path / "out"
    settings = dict(k=2, num_beams=NUM_BEAMS, units=1, progress=False, output_dir=output)
    describe("test_efficientnet", ["blocks.1"], images, **settings)
    with pytest.raises(FileExistsError, match="different: model"):
        describe("test_efficientnet", ["blocks.1"], images, **settings)


# --- bad output locations: one line naming the value -------------------------------------------


@pytest.mark.parametrize("command", ["exemplars", "describe"])
def test_output_that_is_a_file_the_cwd_or_holds_the_inputs(tmp_path, images, command, capsys,
                                                           monkeypatch):  # fmt: skip
    base = [command, "--model", "test_efficientnet", "--layers", "blocks.1", "--images",
            str(images), "--k", "2"]  # fmt: skip
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a directory")
    monkeypatch.chdir(tmp_path)
    for output, expected in [
        (str(a_file), "is an existing file"),
        (".", "is the working directory"),
        (str(tmp_path.parent), "is the working directory or holds it"),
        (str(images), "overlaps the input"),
        (str(images / "results"), "overlaps the input"),
    ]:
        assert cli_main([*base, "--output", output, "--overwrite"]) == 2
        error = error_line(capsys)
        assert expected in error and repr(output) in error
    assert a_file.read_text() == "not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "results.txt"]
    assert len(list(images.iterdir())) == 6


# --- dead units are marked, never described --------------------------------------------------


def test_dead_units_get_a_marker_and_no_scores(tmp_path, images):
    model = TinyNet()
    with torch.no_grad():
        model.conv1.weight[1].zero_()
        model.conv1.bias[1] = 0.0  # constant
        model.conv1.bias[2] = float("nan")  # NaN everywhere
    output = tmp_path / "out"
    descriptions = tiny_describe(images, output, model=model, units=None)
    assert descriptions.column_names == list(schema.RUN_DESCRIPTION_COLUMNS)
    assert descriptions[schema.DEAD] == [False, True, True, False]
    for row in descriptions:
        if row[schema.DEAD]:
            assert row[schema.DESCRIPTION] == schema.DEAD_UNIT_DESCRIPTION
            assert all(math.isnan(row[name]) for name in (schema.SCORE, schema.PRIOR_LOG_PROB))
        else:
            assert row[schema.DESCRIPTION].strip()
            assert row[schema.DESCRIPTION] != schema.DEAD_UNIT_DESCRIPTION
            assert abs(row[schema.SCORE]) < 1e6
    with open(output / "descriptions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(schema.RUN_DESCRIPTION_COLUMNS)
    assert [row["dead"] for row in rows] == ["False", "True", "True", "False"]
    assert rows[1]["score"] == "" and rows[1]["description"] == schema.DEAD_UNIT_DESCRIPTION
    assert "e+38" not in (output / "descriptions.csv").read_text()
