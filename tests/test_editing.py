"""The spurious-text experiment: its data, the truth check, and analyze/audit/edit end to end
on a tiny classifier (trained in seconds into a temporary cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from milan_hf.cli import main as cli_main
from milan_hf.editing import (
    TextClassifierConfig,
    draw_split,
    load_classifier,
    load_text_classifier,
    text_responsive_units,
    write_label,
)

TINY = TextClassifierConfig(train_images=48, epochs=1, channels=(4, 8, 8, 8, 8), image_size=32,
                            font_size=8)  # fmt: skip


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_label_goes_into_the_corner_only():
    image = np.full((32, 32, 3), 100, dtype=np.uint8)
    written = write_label(image, "star", "bottom right", 8)
    changed = np.argwhere((written != image).any(-1))
    assert len(changed) > 10
    assert changed[:, 0].min() >= 16 and changed[:, 1].min() >= 8  # lower right part


def test_splits_are_seeded_and_adversarial_pairs_clean():
    first, again = draw_split(TINY, "validation", 8), draw_split(TINY, "validation", 8)
    assert all(np.array_equal(a, b) for a, b in zip(first["image"], again["image"]))
    assert first["label"] == [0, 1, 2, 3, 4, 5, 6, 7]
    written = [word for word in first["text"] if word]
    assert all(
        word == TINY.classes[label] for word, label in zip(first["text"], first["label"]) if word
    )
    assert 0 < len(written) < 8
    adversarial, clean = draw_split(TINY, "adversarial", 8), draw_split(TINY, "clean", 8)
    assert all(adversarial["text"]) and not any(clean["text"])
    assert adversarial["label"] == clean["label"]
    for with_text, without in zip(adversarial["image"], clean["image"]):
        differs = (with_text != without).any(-1)
        assert 0 < differs.mean() < 0.5  # the same scene, only the word added
    with pytest.raises(ValueError, match="'test'"):
        draw_split(TINY, "test", 4)
    no_text = draw_split(TextClassifierConfig(text_probability=0.0, image_size=32), "train", 8)
    assert not any(no_text["text"])


class WhiteDetector(torch.nn.Module):
    """Unit 0 is the share of near-white pixels (the written labels are white), unit 1 the
    mean red channel away from the corners (blind to the labels); both spatially constant."""

    def __init__(self) -> None:
        super().__init__()
        self.units = torch.nn.Identity()

    def forward(self, pixels):
        near_white = (pixels.min(dim=1, keepdim=True).values > 0.85).float()
        white = near_white.mean(dim=(2, 3), keepdim=True).expand_as(near_white)
        side = pixels.shape[-1]
        middle = pixels[:, :1, side // 3 : 2 * side // 3, side // 3 : 2 * side // 3]
        red = middle.mean(dim=(2, 3), keepdim=True).expand_as(white)
        return self.units(torch.cat([white, red], dim=1)).mean(dim=(2, 3))


def test_truth_check_finds_the_text_unit_only():
    config = TextClassifierConfig(image_size=48, font_size=10)
    responsive = text_responsive_units(WhiteDetector(), config, ["units"], num_images=24)
    assert responsive == {"units": [0]}


def test_classifier_is_cached(tmp_path):
    model, info = load_text_classifier(TINY, cache_dir=tmp_path, progress=False)
    again, _ = load_text_classifier(TINY, cache_dir=tmp_path, train_if_missing=False)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert info["classes"] == TINY.classes
    with pytest.raises(FileNotFoundError, match="no cached"):
        load_text_classifier(
            TextClassifierConfig(seed=99), cache_dir=tmp_path, train_if_missing=False
        )


def test_edit_analyze_audit_commands_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MILAN_HF_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "edit"
    tiny = ["--train-images", "48", "--epochs", "1", "--channels", "4,8,8,8,8"]
    tiny += ["--image-size", "32", "--split-images", "16", "--k", "3", "--num-beams", "2"]
    tiny += ["--layers", "conv5"]
    # The tiny model has no text units: select by a word most descriptions contain instead, so
    # that the selection, ordering and ablation path all run.
    assert cli_main(["edit", "--output", str(out), *tiny, "--query", "the", "--words", "the"]) == 0
    edit = json.loads((out / "edit.json").read_text())
    splits = {"validation", "adversarial_validation", "adversarial", "clean"}
    assert {row["split"] for row in edit["table"]} == splits
    assert edit["chosen"] in edit["curves"]["adversarial_validation"]["num_ablated"]
    assert edit["num_text_units"] == len(edit["text_units"]) == len(edit["single_unit_validation"])
    assert (out / "edit.html").is_file() and (out / "edit.png").is_file()
    model, info = load_classifier(out / "classifier")
    assert info["image_size"] == 32

    analyze = ["analyze", str(out / "describe"), "--model", str(out / "classifier"), "--images"]
    analyze += [str(out / "data" / "validation"), "--points", "3", "--tagger", "lexicon"]
    assert cli_main([*analyze, "--output", str(tmp_path / "analysis")]) == 0
    analysis = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert len(analysis["units"]) == 8 and set(analysis["curves"]) >= {"nouns", "random"}
    assert (tmp_path / "analysis" / "analysis.png").stat().st_size > 1000

    describe_dir = str(out / "describe")
    assert cli_main(["audit", describe_dir, describe_dir, "--names", "a,b", "--query", "stripes",
                     "--output", str(tmp_path / "audit")]) == 0  # fmt: skip
    audited = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert [m["units"] for m in audited["models"]] == [8, 8]
    assert audited["models"][0]["matching"] == audited["models"][1]["matching"]
    assert (tmp_path / "audit" / "audit.html").is_file()
    assert "matching" in capsys.readouterr().out


def test_commands_reject_bad_input(tmp_path, capsys):
    assert cli_main(["audit", str(tmp_path), "--query", "faces"]) == 2
    assert "no finished describe run" in capsys.readouterr().err


def test_the_count_ablated_is_chosen_on_adversarial_validation_not_the_test():
    from milan_hf.editing import EditResult

    steps = [0, 1, 2, 3]
    curves = {
        "validation": {"num_ablated": steps, "accuracy": [0.9, 0.9, 0.8, 0.7]},
        "adversarial_validation": {"num_ablated": steps, "accuracy": [0.3, 0.5, 0.5, 0.4]},
        "adversarial": {"num_ablated": steps, "accuracy": [0.3, 0.4, 0.45, 0.6]},
    }
    units = [("conv5", 4), ("conv5", 1), ("conv4", 2)]
    result = EditResult(units, {}, [0.9, 0.9, 0.8], curves, {"conv5": [1]}, {})
    assert result.chosen() == 1  # the fewest units at the selection split's best
    row = {r["split"]: r for r in result.table()}["adversarial"]
    assert row == {"split": "adversarial", "before": 0.3, "chosen": 0.4,
                   "change": pytest.approx(0.1), "all": 0.6}  # fmt: skip
    assert result.truly_textual() == 1
    assert result.as_dict()["truly_textual_chosen"] == 0
