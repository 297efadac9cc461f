"""The known-unit benchmark on tiny sizes: planted units, synthetic units, matching and tables."""

import json

import pytest
import torch

from milan_hf.cli import main
from milan_hf.known_units import results_markdown, score_description, summarize
from milan_hf.probe_world.planted_timm import (
    check_planted_units,
    plant_units,
    save_planted_model,
)
from milan_hf.processing_milan import MilanProcessor
from tests.captioner_fixtures import single_thread, tiny_captioner, tiny_tokenizer  # noqa: F401


def test_planted_resnet_units_fire_on_their_concept(tmp_path):
    model, units = plant_units("resnet18")
    assert {u.expression[0] for u in units} == {"concept", "and", "or"}
    path = save_planted_model(model, tmp_path / "resnet18.safetensors")
    colour_and_gated = [units[0], units[6], units[14]]  # red; red AND top; red OR blue
    assert [u.expression for u in colour_and_gated] == [
        ("concept", "red"),
        ("and", "red", "top"),
        ("or", "red", "blue"),
    ]
    aucs = check_planted_units("resnet18", path, colour_and_gated, num_images=8, size=64)
    assert all(aucs[u.unit] >= 0.9 for u in colour_and_gated), aucs
    with pytest.raises(ValueError, match="no planting recipe"):
        plant_units("alexnet")


def test_scores_and_tables():
    rows = [
        score_description("ruby patches", ("concept", "red"), part="synthetic", architecture="s"),
        score_description(
            "red areas and red areas", ("and", "red", "top"), part="synthetic", architecture="s"
        ),
        score_description("grass", ("or", "grass", "brick"), part="planted", architecture="r"),
        score_description(
            "nothing in particular", ("concept", "blue"), part="planted", architecture="r"
        ),
    ]
    assert rows[0]["strict"] and rows[0]["exact"] and not rows[1]["strict"] and rows[1]["defects"]
    assert not rows[2]["strict"] and rows[2]["lenient"] and rows[3]["filler"]
    summary = summarize(rows)
    assert summary["by_part"]["synthetic"]["single_accuracy"] == 1.0
    assert summary["by_part"]["synthetic"]["defect_count"] == 1
    assert summary["by_part"]["planted"]["composition_lenient_accuracy"] == 1.0
    assert summary["by_part"]["planted"]["filler_share"] == 0.5
    table = results_markdown(summary, ["a note"])
    assert "| planted / r | 2 |" in table and "- a note" in table


def test_benchmark_command_end_to_end(tmp_path, single_thread):  # noqa: F811
    tokenizer = tiny_tokenizer(("red", "blue", "areas", "top", "circles"))
    captioner = tiny_captioner(tokenizer)
    captioner.save_pretrained(tmp_path / "captioner")
    MilanProcessor.from_model_config(captioner.config, tokenizer).save_pretrained(
        tmp_path / "captioner"
    )
    output = tmp_path / "bench"
    torch.manual_seed(0)
    status = main(["benchmark", "--output", str(output), "--captioner", str(tmp_path / "captioner"),
                   "--architectures", "tf_efficientnet_lite0", "--num-images", "16",
                   "--image-size", "32", "--synthetic-units", "3", "--min-auc", "0.5",
                   "--corpus", str(tmp_path / "no-corpus")])  # fmt: skip
    assert status == 0
    results = json.loads((output / "results.json").read_text())
    parts = {row["part"] for row in results["units"]}
    assert parts == {"planted", "synthetic"}
    assert any("corpus part skipped" in note for note in results["notes"])
    assert (output / "planted" / "tf_efficientnet_lite0.safetensors").is_file()
    assert sum(r["part"] == "synthetic" for r in results["units"]) == 3
    assert "Known-unit benchmark" in (output / "results.md").read_text()
    assert main(["benchmark", "--output", str(output), "--num-images", "0"]) == 2


def test_exact_naming_rejects_extra_concepts():
    extra = score_description("either red areas or boxes", ("concept", "red"), part="p")
    assert extra["strict"] and not extra["exact"]
    located = score_description("red patches at the top", ("and", "red", "top"), part="p")
    assert located["exact"]
