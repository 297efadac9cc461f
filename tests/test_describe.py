"""`milan-hf describe` and `milan_hf.describe`: the embedded default end to end, resuming after
an interruption, bad arguments, and publishing (HfApi patched)."""

from __future__ import annotations

import csv
import importlib
import json
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from milan_hf.cli import main as cli_main
from milan_hf.describer import (
    DEFAULT_IMAGE_SIZE,
    EMBEDDED_CAPTIONER,
    describe,
    describe_default,
    load_captioner,
    load_description_outputs,
    push_descriptions_to_hub,
)
from milan_hf.exemplar_storage import load_exemplars
from milan_hf.schema import RUN_DESCRIPTION_COLUMNS as DESCRIPTION_COLUMNS
from tests.captioner_fixtures import single_thread  # noqa: F401  (fixture)
from tests.tiny_models import TinyNet

# The module itself (milan_hf/__init__.py may re-export the function `describe` under its name).
describe_module = importlib.import_module("milan_hf.describer")

NUM_BEAMS = 4  # small beams keep the tests fast; decoding itself is tested in test_captioner


# One thread: on a busy 2-core machine two threads spin against each other.
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def probe_images() -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(8)]
    return datasets.Dataset.from_dict(
        {"image": images}, features=datasets.Features({"image": datasets.Image()})
    )


def tiny_describe(probe_images, output_dir, layers=("conv1", "conv2"), **kwargs):
    settings = dict(k=3, num_beams=NUM_BEAMS, input_size=32, batch_size=8, progress=False)
    return describe(TinyNet(), list(layers), probe_images, output_dir=output_dir,
                    **{**settings, **kwargs})  # fmt: skip


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_embedded_captioner_is_small_and_loads():
    files = {path.name for path in EMBEDDED_CAPTIONER.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files
    size = sum(path.stat().st_size for path in EMBEDDED_CAPTIONER.iterdir())
    assert size < 15e6, f"embedded captioner is {size / 1e6:.1f} MB"
    model, processor = load_captioner()
    assert model.prior is not None and processor.tokenizer is not None
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    assert processor.image_size == model.config.image_size
    # Held-out networks never trained it: the card says which they were.
    assert "Held out" in (EMBEDDED_CAPTIONER / "README.md").read_text()


def test_default_run_end_to_end(tmp_path, monkeypatch):
    """The README's main command (`milan-hf describe`) in Python, with fewer scenes and units."""
    monkeypatch.setenv("MILAN_HF_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "report"
    descriptions = describe_default(
        output, num_scenes=6, layers=("blocks.4",), units=3, num_beams=NUM_BEAMS, progress=False
    )
    assert descriptions.column_names == list(DESCRIPTION_COLUMNS)
    assert descriptions["layer"] == ["blocks.4"] * 3 and descriptions["unit"] == [0, 1, 2]
    assert all(text.strip() for text in descriptions["description"])
    # PMI score = log p(d|E) − λ·log p(d), λ the captioner's default (chosen on validation units)
    pmi_weight = json.loads((EMBEDDED_CAPTIONER / "generation_config.json").read_text())[
        "pmi_weight"
    ]
    for row in descriptions:
        expected = row["captioner_log_prob"] - pmi_weight * row["prior_log_prob"]
        assert row["score"] == pytest.approx(expected, abs=1e-4)

    rows = read_csv(output / "descriptions.csv")
    assert list(rows[0]) == list(DESCRIPTION_COLUMNS)
    assert [row["description"] for row in rows] == descriptions["description"]
    saved, exemplars = load_description_outputs(output)
    assert saved.to_list() == descriptions.to_list()
    assert len(exemplars) == 3 and len(exemplars[0]["images"]) == 15
    assert exemplars[0]["images"][0].size == (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    page = (output / "index.html").read_text()
    assert descriptions["description"][0].split()[0] in page
    assert any((output / "thumbs").rglob("*"))
    assert not (output / ".state").exists()  # finished: the resume state is cleaned up
    # The probe set is probe-world scenes plus the scikit-image photographs.
    names = datasets.load_from_disk(next((tmp_path / "cache").glob("*/*")))["name"]
    assert sum(n.startswith("skimage:") for n in names) >= 17 * 5
    assert sum(n.startswith("probe-world:") for n in names) == 6


def test_resume_skips_finished_layers(tmp_path, probe_images, monkeypatch):
    output = tmp_path / "out"
    extracted, described = [], []
    real_extract = describe_module.extract_exemplars
    real_describe = describe_module.describe_exemplars

    def counting_extract(model, layers, *args, **kwargs):
        extracted.append(list(layers))
        return real_extract(model, layers, *args, **kwargs)

    def interrupted_describe(exemplars, *args, **kwargs):
        described.append(exemplars[0]["layer"])
        if exemplars[0]["layer"] == "conv2":
            raise KeyboardInterrupt  # the run dies while describing layer 2
        return real_describe(exemplars, *args, **kwargs)

    monkeypatch.setattr(describe_module, "extract_exemplars", counting_extract)
    monkeypatch.setattr(describe_module, "describe_exemplars", interrupted_describe)
    with pytest.raises(KeyboardInterrupt):
        tiny_describe(probe_images, output)
    assert extracted == [["conv1", "conv2"]] and described == ["conv1", "conv2"]
    assert not (output / "descriptions.csv").exists()  # nothing looks complete
    assert not (output / "descriptions").exists()

    extracted.clear(), described.clear()
    monkeypatch.setattr(
        describe_module,
        "describe_exemplars",
        lambda exemplars, *a, **kw: (
            described.append(exemplars[0]["layer"]) or real_describe(exemplars, *a, **kw)
        ),
    )
    descriptions = tiny_describe(probe_images, output)
    assert extracted == [] and described == ["conv2"]  # layer 1 came from the first run
    assert descriptions["layer"] == ["conv1"] * 4 + ["conv2"] * 3
    assert [row["layer"] for row in read_csv(output / "descriptions.csv")] == descriptions["layer"]
    assert len(load_exemplars(output / "exemplars")) == 7
    assert (output / "index.html").is_file()

    # The same run again finds its results; different settings refuse to mix with them.
    described.clear()
    assert tiny_describe(probe_images, output).to_list() == descriptions.to_list()
    assert extracted == [] and described == []
    with pytest.raises(FileExistsError, match="other describe settings"):
        tiny_describe(probe_images, output, k=2)
    again = tiny_describe(probe_images, output, k=2, overwrite=True)
    assert extracted == [["conv1", "conv2"]] and len(again) == 7

    # Asking for one more layer later reuses the layer already described.
    extracted.clear(), described.clear()
    first = tiny_describe(probe_images, tmp_path / "grow", layers=["conv1"])
    both = tiny_describe(probe_images, tmp_path / "grow", layers=["conv1", "conv2"])
    assert extracted == [["conv1"], ["conv2"]] and described == ["conv1", "conv2"]
    assert both.select(range(4)).to_list() == first.to_list()


def test_resume_survives_a_reinstalled_captioner(tmp_path, probe_images, monkeypatch):
    """Settings are compared by content: new file times or an edited card change nothing."""
    captioner = tmp_path / "captioner"
    shutil.copytree(EMBEDDED_CAPTIONER, captioner)
    first = tiny_describe(probe_images, tmp_path / "out", captioner=captioner, units=1)
    for path in captioner.iterdir():
        os.utime(path, (1, 1))
    with open(captioner / "README.md", "a") as card:
        card.write("\nEdited.\n")
    calls = []
    monkeypatch.setattr(describe_module, "extract_exemplars", lambda *a, **k: calls.append(a))
    again = tiny_describe(probe_images, tmp_path / "out", captioner=captioner, units=1)
    assert calls == [] and again.to_list() == first.to_list()


def test_describe_without_output_dir_selects_units(tmp_path, probe_images, monkeypatch):
    monkeypatch.chdir(tmp_path)
    descriptions = describe(TinyNet(), "conv2,conv1", probe_images, k=3, units=[2, 0],
                            num_beams=NUM_BEAMS, input_size=32, progress=False)  # fmt: skip
    assert list(zip(descriptions["layer"], descriptions["unit"])) == [
        ("conv2", 0), ("conv2", 2), ("conv1", 0), ("conv1", 2)
    ]  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bad_arguments(tmp_path, probe_images, capsys):
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        describe(TinyNet(), "conv1,conv9", probe_images, k=3, input_size=32)
    with pytest.raises(ValueError, match="k=20 is larger than the number of probe images"):
        describe(TinyNet(), "conv1", probe_images, k=20, input_size=32)
    with pytest.raises(ValueError, match="more than once"):
        describe(TinyNet(), "conv1,conv1", probe_images)
    with pytest.raises(ValueError, match="num_beams must be a positive integer"):
        describe(TinyNet(), "conv1", probe_images, num_beams=0)
    with pytest.raises(ValueError, match="pmi_weight"):
        describe(TinyNet(), "conv1", probe_images, pmi_weight=-1.0)
    with pytest.raises(ValueError, match="no unit \\[7\\]"):
        describe(TinyNet(), "conv2", probe_images, k=3, input_size=32, units=[0, 7],
                 num_beams=NUM_BEAMS, progress=False)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="not a captioner directory"):
        describe(TinyNet(), "conv1", probe_images, k=3, captioner=tmp_path)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="other files"):
        tiny_describe(probe_images, occupied)
    assert (occupied / "notes.txt").read_text() == "mine"

    # The command line: one clear line and exit status 2.
    assert cli_main(["describe", "--model", "resnet18"]) == 2
    assert "--model needs --layers, --images, --output" in capsys.readouterr().err
    assert cli_main(["describe", "--layers", "blocks.4"]) == 2
    assert "--layers need(s) --model" in capsys.readouterr().err
    assert cli_main(["describe", "--model", "resnet18", "--layers", "layer1", "--images",
                     str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "probe images not found" in capsys.readouterr().err
    assert cli_main(["describe", "--max-units", "0"]) == 2
    assert "--max-units must be a positive integer" in capsys.readouterr().err


def test_command_line_with_push(tmp_path, fake_hub, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for index in range(6):
        image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{index}.png")
    output = tmp_path / "out"
    status = cli_main(
        ["describe", "--model", "test_efficientnet", "--layers", "blocks.1", "--images",
         str(folder), "--output", str(output), "--k", "3", "--num-beams", str(NUM_BEAMS),
         "--max-units", "2", "--pmi-weight", "0", "--push-to-hub", "someone/tiny-descriptions"]
    )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert f"report: {(output / 'index.html').resolve()}" in printed
    rows = read_csv(output / "descriptions.csv")
    assert [(row["layer"], row["unit"]) for row in rows] == [("blocks.1", "0"), ("blocks.1", "1")]
    for row in rows:  # λ = 0: the score is log p(d|E) itself
        assert float(row["score"]) == pytest.approx(float(row["captioner_log_prob"]), abs=1e-4)

    assert fake_hub.calls_to("create_repo") == [
        {"repo_id": "someone/tiny-descriptions", "repo_type": "dataset", "private": False,
         "exist_ok": True}
    ]  # fmt: skip
    (upload,) = fake_hub.calls_to("upload_folder")
    assert upload["repo_id"] == "someone/tiny-descriptions"
    assert upload["repo_type"] == "dataset"
    root = fake_hub.folder("someone/tiny-descriptions")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md",
        "data/exemplars-00000-of-00001.parquet",
        "data/train-00000-of-00001.parquet",
    ]
    sent = {"card": (root / "README.md").read_text()}
    sent["descriptions"] = datasets.Dataset.from_parquet(
        [str(p) for p in sorted(root.glob("data/train-*.parquet"))]
    ).to_list()
    sent["exemplar_columns"] = datasets.Dataset.from_parquet(
        [str(p) for p in sorted(root.glob("data/exemplars-*.parquet"))]
    ).column_names
    assert [row["description"] for row in sent["descriptions"]] == [r["description"] for r in rows]
    assert "images" in sent["exemplar_columns"]
    assert "# Neuron descriptions of test_efficientnet" in sent["card"]
    assert "config_name: exemplars" in sent["card"]
    assert rows[0]["description"].replace("|", "\\|") in sent["card"]


def test_push_escapes_descriptions_in_the_card(tmp_path, probe_images, fake_hub):
    output = tmp_path / "out"
    tiny_describe(probe_images, output, units=1)
    descriptions, exemplars = load_description_outputs(output)
    descriptions = descriptions.map(lambda row: {"description": "a | b\nc"})
    push_descriptions_to_hub(descriptions, exemplars, "someone/repo", captioner="my/captioner")
    (upload,) = fake_hub.calls_to("upload_folder")
    card = fake_hub.sent["someone/repo"]["README.md"].decode()
    assert "| a \\| b c |" in card
    assert "`my/captioner`" in card
    assert json.loads(json.dumps(descriptions.to_list()))  # plain data, nothing exotic


def test_hub_folder_is_what_load_dataset_reads_and_push_is_one_commit(tmp_path, fake_hub):
    from milan_hf.hub import descriptions_card, push_dataset, write_dataset_folder

    rows = datasets.Dataset.from_dict({"layer": ["a"] * 5, "unit": list(range(5))})
    paths = write_dataset_folder(rows, tmp_path / "folder", "card text", max_rows_per_shard=2)
    assert [p.name for p in paths] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert datasets.Dataset.from_parquet([str(p) for p in paths])["unit"] == list(range(5))
    assert (tmp_path / "folder" / "README.md").read_text() == "card text"

    push_dataset(rows, "someone/rows", "card")
    assert [name for name, _repo, _kwargs in fake_hub.calls] == ["create_repo", "upload_folder"]
    assert [call["repo_id"] for call in fake_hub.calls_to("create_repo")] == ["someone/rows"]
    uploaded = sorted(Path(path).name for path in fake_hub.sent["someone/rows"])
    assert uploaded == ["README.md", "train-00000-of-00001.parquet"]

    # A dead unit's NaN score is shown as no score in the card, never as "nan" or 3.4e38.
    descriptions = datasets.Dataset.from_dict(
        {"layer": ["l"], "unit": [0], "description": ["(dead unit)"], "score": [float("nan")]}
    )
    card = descriptions_card(descriptions, descriptions, captioner="x/y")
    assert "| `l` | 0 | (dead unit) | – |" in card and "| nan |" not in card
    assert "faithfulness_auc" not in card
    # Verification's columns are documented when the dataset has them.
    verified = descriptions.add_column("faithfulness_auc", [0.9]).add_column("verifiable", [True])
    card = descriptions_card(verified, descriptions, captioner="x/y")
    assert "| `described_by` | the method and models that produced the description |\n" \
        "  | `faithfulness_auc` | AUC of" in card
    assert "`verifiable`" in card and "`contrastive_auc`" not in card
