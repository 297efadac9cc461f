"""milan_hf.probe_world.ground_truth: the one known-unit accuracy, shared by ``milan-hf evaluate``
and ``scripts/eval_known_units.py``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from milan_hf.benchmark import (
    DecodingSetting,
    evaluate_known_units,
    read_probe_world_corpus,
    run_benchmark,
)
from milan_hf.describer import load_captioner
from milan_hf.milannotations import load_milannotations
from milan_hf.probe_world.corpus import build_corpus
from milan_hf.probe_world.ground_truth import (
    COMPOSITION,
    IOU_LABELLED,
    PLANTED,
    KnownUnit,
    known_unit_accuracy,
    markdown_summary,
    probe_world_concept_phrases,
)
from milan_hf.processing_milan import MilanProcessor
from milan_hf.tokenization_milan import MilanTokenizer
from tests.captioner_fixtures import tiny_captioner

REPOSITORY = Path(__file__).resolve().parents[1]


def test_strict_and_lenient_rules_per_family_and_way_of_knowing():
    units = [
        KnownUnit(("or", "red", "blue"), PLANTED),
        KnownUnit(("and", "red", "top"), PLANTED),
        KnownUnit(("concept", "red"), IOU_LABELLED),
        KnownUnit(("or", "red", "blue"), IOU_LABELLED),
        None,
    ]
    descriptions = ["red things", "red things", "crimson patches", "red and blue", "anything"]
    correct, summary = known_unit_accuracy(descriptions, units, probe_world_concept_phrases())
    # "a OR b": strict needs both, lenient either; "a AND b" needs both under either rule.
    assert correct == [False, False, True, True, None]
    assert summary["accuracy"] == 0.5 and summary["lenient_accuracy"] == 0.75
    assert summary["num_known_units"] == 4
    assert summary["by_family"][COMPOSITION]["num_units"] == 3
    assert summary["lenient_by_family"][COMPOSITION]["accuracy"] == pytest.approx(2 / 3)
    assert summary["by_family"]["colour"]["accuracy"] == 1.0
    planted = summary["ground_truth"][PLANTED]
    assert (planted["accuracy"], planted["lenient_accuracy"]) == (0.0, 0.5)
    assert summary["ground_truth"][IOU_LABELLED]["accuracy"] == 1.0
    assert units[0].record() == {"concept": "red blue", "family": COMPOSITION, "known_by": PLANTED}
    assert known_unit_accuracy(["x"], [None]) == ([None], {})
    with pytest.raises(ValueError, match="2 descriptions for 1 ground-truth units"):
        known_unit_accuracy(["a", "b"], [None])


@pytest.fixture(scope="module")
def corpus_and_captioner(tmp_path_factory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ground_truth")
    corpus = root / "probe"
    build_corpus(
        corpus, num_images=40, k=4, tiny=True, image_size=32, model_cache_dir=root / "models",
        progress=False,
    )  # fmt: skip
    words = set()
    for annotation_file in corpus.glob("*/probeworld/annotations.csv"):
        with open(annotation_file, newline="") as handle:
            words.update(word for row in csv.DictReader(handle) for word in row["summary"].split())
    tokenizer = MilanTokenizer.from_words(sorted(words))
    model = tiny_captioner(tokenizer, seed=1)
    captioner = root / "captioner"
    model.save_pretrained(captioner)
    MilanProcessor.from_model_config(model.config, tokenizer).save_pretrained(captioner)
    return corpus, captioner


def test_the_script_and_the_benchmark_report_one_accuracy(corpus_and_captioner):
    corpus, captioner = corpus_and_captioner
    results = evaluate_known_units(
        captioner, corpus, pmi_weights=[0.0, 0.5], num_beams=2, progress=False
    )
    assert results["held_out"] == ["shape-vit/probeworld"]
    network = results["networks"]["shape-vit"]
    assert 0 < network["known_units"] <= network["units"]
    assert network["corpus_descriptions_name_the_concept"] == 1.0

    model, processor = load_captioner(captioner)
    rows = load_milannotations("shape-vit/probeworld", data_dir=corpus, split="all")
    benchmark = run_benchmark(
        model, processor, rows,
        [DecodingSetting("lambda=0.0", 2, 0.0), DecodingSetting("lambda=0.5", 2, 0.5)],
        probe_world=read_probe_world_corpus(corpus), metrics=("rouge",), progress=False,
    )  # fmt: skip
    for method in ("lambda=0.0", "lambda=0.5"):
        row, overall = benchmark.rows[method], results["overall"][method]
        assert row["num_known_units"] == overall["num_units"] == network["known_units"]
        assert row["accuracy"] == overall["accuracy"] == network[method]["accuracy"]
        assert row["lenient_accuracy"] == overall["lenient_accuracy"]
    table = markdown_summary(results)
    assert "| shape-vit |" in table and "lambda=0.5: strict / lenient" in table


def test_eval_known_units_script_is_a_thin_caller(corpus_and_captioner, tmp_path):
    corpus, captioner = corpus_and_captioner
    output = tmp_path / "results.json"
    command = [
        sys.executable, str(REPOSITORY / "scripts" / "eval_known_units.py"), "--corpus",
        str(corpus), "--captioner", str(captioner), "--pmi-weights", "0", "--num-beams", "2",
        "--threads", "1", "--output", str(output),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPOSITORY)
    assert done.returncode == 0, done.stderr
    results = json.loads(output.read_text())
    assert "| all held out |" in done.stdout
    assert set(results["overall"]) == {"lambda=0.0"}
    with pytest.raises(FileNotFoundError, match="no corpus.json"):
        evaluate_known_units(captioner, tmp_path)
