"""``milan-hf evaluate`` and ``milan_hf.benchmark`` on a tiny probe-world corpus.

The corpus (planted units + two quickly trained nets, 40 scenes of 32 px) is built once by the
probe world's own builder; the captioner is tiny and randomly initialised, so the descriptions
are nonsense but deterministic: the tests check the table's rows, the files, the per-unit
dataset, that the λ sweep reranks one beam exactly as ``generate`` would, that the re-annotated
ground truth matches the corpus and the planted units' construction, and bad input.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import datasets
import pytest
import torch

from milan_hf import cli
from milan_hf.benchmark import (
    BEAM,
    GREEDY,
    IOU_LABELLED,
    NETDISSECT,
    PLANTED,
    annotate_probe_world_units,
    check_annotations_against_references,
    decoding_settings,
    expression_concept,
    generate_descriptions,
    probe_world_concept_phrases,
    probe_world_ground_truth,
    read_probe_world_corpus,
    rerank_beam,
    score_methods,
)
from milan_hf.metrics import load_metric
from milan_hf.milannotations import load_milannotations
from milan_hf.probe_world.corpus import build_corpus
from milan_hf.probe_world.planted import planted_units
from milan_hf.processing_milan import MilanProcessor
from milan_hf.tokenization_milan import MilanTokenizer
from tests.captioner_fixtures import tiny_captioner
from tests.milannotations_fixture import (
    UNITS_PER_SET,
    description,
    write_milannotations,
    write_set,
)

# The test split: the planted network (ground truth by construction) and the small CNN.
HELD_OUT = ["planted", "shape-cnn"]
FAST_METRICS = "bleu,rouge"


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("corpus")
    build_corpus(
        root / "probe",
        num_images=40,
        k=4,
        tiny=True,
        image_size=32,
        model_cache_dir=root / "models",
        progress=False,
    )
    return root / "probe"


@pytest.fixture(scope="module")
def captioner_dir(corpus_dir, tmp_path_factory) -> Path:
    words = set()
    for annotation_file in corpus_dir.glob("*/probeworld/annotations.csv"):
        with open(annotation_file, newline="") as handle:
            for row in csv.DictReader(handle):
                words.update(row["summary"].split())
    tokenizer = MilanTokenizer.from_words(sorted(words))
    model = tiny_captioner(tokenizer, seed=1)
    folder = tmp_path_factory.mktemp("captioner")
    model.save_pretrained(folder)
    MilanProcessor.from_model_config(model.config, tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def test_split(corpus_dir) -> datasets.Dataset:
    return load_milannotations("all", data_dir=corpus_dir, split="test", held_out=HELD_OUT)


def evaluate(*arguments) -> int:
    return cli.main(["evaluate", "--quiet", *map(str, arguments)])


def test_evaluate_writes_the_table_files_and_per_unit_dataset(
    corpus_dir, captioner_dir, test_split, tmp_path, capsys
):
    output = tmp_path / "evaluation"
    code = evaluate(
        "--captioner", captioner_dir, "--data", corpus_dir, "--held-out", *HELD_OUT,
        "--pmi-weights", "0,0.2,1", "--num-beams", 3, "--output", output,
        "--metrics", "bertscore," + FAST_METRICS,
    )  # fmt: skip
    assert code == 0
    methods = [NETDISSECT, GREEDY, BEAM, "PMI λ=0.2", "PMI λ=1"]
    document = json.loads((output / "results.json").read_text())
    assert list(document["results"]) == methods
    units = len(test_split)
    assert units == 38 + 16
    for method in methods:
        row = document["results"][method]
        assert row["num_units"] == units
        assert set(row["by_set"]) == {"planted/probeworld", "shape-cnn/probeworld"}
        assert row["by_set"]["planted/probeworld"]["num_units"] == 38
        assert set(row["ground_truth"]) == {PLANTED, IOU_LABELLED}
        assert row["ground_truth"][PLANTED]["num_units"] == len(planted_units())
        assert 0.0 <= row["bertscore_f1"] <= 1.0
        assert 0.0 <= row["empty_fraction"] <= 1.0
    # The IoU describer names its own concept: perfect on IoU-labelled units, and better than
    # an untrained captioner everywhere.
    netdissect = document["results"][NETDISSECT]
    assert netdissect["ground_truth"][IOU_LABELLED]["accuracy"] == 1.0
    assert netdissect["bertscore_f1"] > document["results"][GREEDY]["bertscore_f1"]
    metadata = document["metadata"]
    assert metadata["held_out"] == ["planted/probeworld", "shape-cnn/probeworld"]
    assert metadata["split"] == "test"
    assert metadata["probe_world"]["units_reannotated_identically"] == units

    markdown = (output / "results.md").read_text()
    assert "| NetDissect (IoU) |" in markdown and "| PMI λ=1 |" in markdown
    assert "| Method | planted/probeworld | shape-cnn/probeworld |" in markdown
    assert "Concept accuracy on planted units" in markdown
    assert markdown in capsys.readouterr().out

    per_unit = datasets.load_from_disk(str(output / "per_unit"))
    assert len(per_unit) == units * len(methods)
    for column in ("layer", "unit", "source", "description", "references", "bertscore_f1",
                   "sentence_bleu", "rougeL", "concept", "family", "known_by", "correct",
                   "method"):  # fmt: skip
        assert column in per_unit.column_names, column
    rows = per_unit.filter(lambda row: row["method"] == NETDISSECT)
    by_unit = {(r["source"], r["layer"], r["unit"]): r for r in rows}
    red_or_blue = by_unit[("planted/probeworld", "logic", 0)]
    assert red_or_blue["concept"] == "red blue" and red_or_blue["known_by"] == PLANTED
    references = {(r["source"], r["layer"], r["unit"]): r["descriptions"] for r in test_split}
    assert all(r["references"] == references[key] for key, r in by_unit.items())

    card = (output / "model_card.md").read_text()
    assert "model-index" in card and "PMI λ=0.2" in card
    assert not list(tmp_path.glob(".evaluation.*"))  # no staging folder left behind


def test_lambda_sweep_reranks_one_beam_like_generate(captioner_dir, test_split):
    from milan_hf.modeling_milan import MilanCaptionerModel

    captioner = MilanCaptionerModel.from_pretrained(captioner_dir).eval()
    processor = MilanProcessor.from_pretrained(captioner_dir)
    rows = test_split.select(range(6))
    settings = decoding_settings([0.0, 0.5, 3.0], num_beams=4)
    assert [s.method for s in settings] == [GREEDY, BEAM, "PMI λ=0.5", "PMI λ=3"]
    swept = generate_descriptions(captioner, processor, rows, settings, batch_size=4)
    inputs = processor(list(rows))
    for setting in settings:
        expected = processor.batch_decode(
            captioner.generate(
                **inputs, num_beams=setting.num_beams, pmi_weight=setting.pmi_weight,
                no_repeat_ngram_size=0,
            ).sequences
        )  # fmt: skip
        assert swept[setting.method] == expected, setting.method
    beam = captioner.generate(**inputs, num_beams=4, pmi_weight=0.0, no_repeat_ngram_size=0)
    assert torch.equal(rerank_beam(beam, 0.0), beam.sequences)
    token_level = generate_descriptions(
        captioner, processor, rows, settings[-1:], batch_size=4, pmi_strategy="token"
    )
    expected = captioner.generate(
        **inputs, num_beams=4, pmi_weight=3.0, pmi_strategy="token", no_repeat_ngram_size=0
    )
    assert token_level["PMI λ=3"] == processor.batch_decode(expected.sequences)


def test_empty_descriptions_score_zero_bertscore_instead_of_crashing():
    bertscore = load_metric("bertscore")
    result = bertscore.compute(
        predictions=["", "red circles", " "], references=[["red"], ["red circles"], ["blue"]]
    )
    assert result["bertscore_f1"][0] == 0.0 and result["bertscore_f1"][2] == 0.0
    assert result["bertscore_f1"][1] == pytest.approx(1.0, abs=1e-4)
    assert bertscore.compute(predictions=[""], references=[["red"]])["bertscore_f1"] == [0.0]


def test_joint_scoring_of_methods_equals_scoring_each_alone(test_split):
    from milan_hf.evaluation import score_descriptions

    units = test_split.select(range(6))
    texts = ["red patches", "blue", "vertical stripes", "", "red patches", "circles at the top"]
    descriptions = {"a": texts, "b": texts[::-1]}
    rows, per_unit = score_methods(units, descriptions, metrics=("bertscore", "rouge"))
    references = units.select_columns(["layer", "unit", "descriptions"])
    for method, method_texts in descriptions.items():
        predictions = datasets.Dataset.from_dict(
            {"layer": units["layer"], "unit": units["unit"], "description": method_texts}
        )
        alone, summary = score_descriptions(
            predictions, references, metrics=[load_metric("bertscore"), "rouge"]
        )
        assert per_unit[method]["bertscore_f1"] == pytest.approx(alone["bertscore_f1"])
        assert rows[method]["bertscore_f1"] == pytest.approx(summary["bertscore_f1"])
        assert rows[method]["rougeL"] == pytest.approx(summary["rougeL"])
        assert per_unit[method]["description"] == method_texts
    assert rows["a"]["empty_fraction"] == pytest.approx(1 / 6)


def test_reannotated_concepts_are_checked_against_the_references_meaning():
    from milan_hf.probe_world.annotation import Annotation

    said = [["red patches", "crimson areas", "reddish things"]] * 3 + [["things at the top"]]
    units = datasets.Dataset.from_dict({"descriptions": said})
    found = [
        Annotation("l", 0, ("concept", "red"), 0.5, ["red patches", "crimson areas", "x"]),
        Annotation("l", 1, ("and", "red", "top"), 0.5, ["red things at the top"]),
        Annotation("l", 2, ("none",), 0.0, ["no clear concept"]),
        Annotation("l", 3, ("and", "red", "top"), 0.5, ["things at the top"] * 3),
    ]
    phrases = probe_world_concept_phrases()
    agreement = check_annotations_against_references(units, found, phrases, min_agreement=0.3)
    # Other wording, same concept: agrees. "red top" is not what "red patches" says. No
    # concept: nothing to check. A differently worded reannotation naming another concept
    # (a region alone, as an older annotator did) does not agree.
    assert agreement == [True, False, None, False]
    with pytest.raises(ValueError, match="only 1/3 of them"):
        check_annotations_against_references(units, found, phrases, min_agreement=0.5)


def test_reannotation_reproduces_the_corpus_and_planted_truth_is_by_construction(
    corpus_dir, test_split
):
    corpus = read_probe_world_corpus(corpus_dir)
    annotations = annotate_probe_world_units(corpus, test_split, seed=corpus.seed, progress=False)
    assert [a.descriptions for a in annotations] == test_split["descriptions"]
    truth = probe_world_ground_truth(corpus, test_split, annotations)
    expressions = {(u.layer, u.unit): u.expression for u in planted_units()}
    for row, item, annotation in zip(test_split, truth, annotations):
        if row["source"] == "planted/probeworld":
            expected = expressions[(row["layer"], row["unit"])]
            assert item == {
                "concept": expression_concept(expected)[0],
                "family": expression_concept(expected)[1],
                "known_by": PLANTED,
            }
        elif annotation.expression[0] == "none":
            assert item is None
        else:
            assert item["known_by"] == IOU_LABELLED
            assert item["concept"] == expression_concept(annotation.expression)[0]
    assert sum(item is not None and item["known_by"] == IOU_LABELLED for item in truth) > 0
    assert expression_concept(("concept", "vertical stripes")) == ("vertical stripes", "texture")
    assert expression_concept(("and", "red", "top")) == ("red top", "composition")


def test_default_split_is_the_corpus_held_out_networks(corpus_dir, captioner_dir, tmp_path):
    output = tmp_path / "out"
    code = evaluate(
        "--captioner", captioner_dir, "--data", corpus_dir, "--pmi-weights", "0",
        "--num-beams", 2, "--metrics", "rouge", "--max-units", 5, "--output", output,
    )  # fmt: skip
    assert code == 0
    document = json.loads((output / "results.json").read_text())
    assert document["metadata"]["held_out"] == ["shape-vit/probeworld"]
    assert list(document["results"]) == [NETDISSECT, GREEDY, BEAM]
    assert document["results"][GREEDY]["num_units"] == 5
    code = evaluate(
        "--captioner", captioner_dir, "--data", corpus_dir, "--held-out", "none",
        "--pmi-weights", "0", "--num-beams", 2, "--metrics", "rouge", "--max-units", 3,
        "--output", output, "--overwrite",
    )  # fmt: skip
    assert code == 0
    metadata = json.loads((output / "results.json").read_text())["metadata"]
    assert metadata["held_out"] == [] and metadata["num_units"] == 3  # within-network split


def test_a_corpus_from_another_world_version_is_scored_without_baseline(
    corpus_dir, captioner_dir, tmp_path
):
    copy = tmp_path / "corpus"
    shutil.copytree(corpus_dir, copy)
    info = json.loads((copy / "corpus.json").read_text())
    (copy / "corpus.json").write_text(json.dumps({**info, "world_version": "0ld"}))
    output = tmp_path / "out"
    code = evaluate(
        "--captioner", captioner_dir, "--data", copy, "--held-out", "shape-cnn",
        "--pmi-weights", "0", "--num-beams", 2, "--metrics", "rouge", "--output", output,
    )  # fmt: skip
    assert code == 0
    document = json.loads((output / "results.json").read_text())
    assert list(document["results"]) == [GREEDY, BEAM]
    assert "version '0ld'" in document["metadata"]["probe_world"]["skipped"]
    assert "No NetDissect row or accuracy" in (output / "results.md").read_text()


def test_milannotations_layout_gives_the_paper_table_columns(tmp_path, capsys):
    # Three sets of the original release (Places sets ship images); hold out two of them.
    sets = ("alexnet/places365", "resnet152/places365", "biggan/places365")
    data = write_milannotations(tmp_path / "milannotations", sets)
    write_set(data, "mini/places365", seed=9, mask_size=8)  # training only: never read
    words = sorted({word for name in sets for word in description(name, "x", 0, 0).split()})
    tokenizer = MilanTokenizer.from_words([*words, "conv1", "conv5", "layer1", "layer4"])
    captioner = tmp_path / "captioner"
    model = tiny_captioner(tokenizer)
    model.save_pretrained(captioner)
    MilanProcessor.from_model_config(model.config, tokenizer).save_pretrained(captioner)
    output = tmp_path / "out"
    code = evaluate(
        "--captioner", captioner, "--data", "places365", "--data-dir", data,
        "--held-out", "alexnet", "resnet152", "--pmi-weights", "0,0.5", "--num-beams", 2,
        "--metrics", FAST_METRICS, "--output", output,
    )  # fmt: skip
    assert code == 0
    results = json.loads((output / "results.json").read_text())["results"]
    assert list(results) == [GREEDY, BEAM, "PMI λ=0.5"]  # no concept masks: no baseline
    assert list(results[BEAM]["by_set"]) == ["alexnet/places365", "resnet152/places365"]
    assert results[BEAM]["num_units"] == 2 * UNITS_PER_SET
    markdown = (output / "results.md").read_text()
    assert "| Method | alexnet/places365 | resnet152/places365 |" in markdown
    assert "ROUGE-L by set (paper Table 2 layout)" in markdown
    within_network = ["--captioner", captioner, "--data", data, "--held-out", "none"]
    assert evaluate(*within_network, "--output", tmp_path / "out2") == 2
    assert "mixes mask sizes" in capsys.readouterr().err


def test_evaluate_on_a_saved_dataset_without_concept_masks(captioner_dir, test_split, tmp_path):
    saved = tmp_path / "saved"
    test_split.select(range(38, 44)).save_to_disk(str(saved))
    output = tmp_path / "out"
    code = evaluate(
        "--captioner", captioner_dir, "--data", saved, "--pmi-weights", "0.5",
        "--num-beams", 2, "--metrics", FAST_METRICS, "--output", output,
    )  # fmt: skip
    assert code == 0
    results = json.loads((output / "results.json").read_text())["results"]
    assert list(results) == [GREEDY, BEAM, "PMI λ=0.5"]  # no baseline without concept masks
    assert "ground_truth" not in results[GREEDY] and results[GREEDY]["num_units"] == 6


def test_push_to_hub_adds_eval_results_to_the_card(corpus_dir, captioner_dir, tmp_path, fake_hub):
    # The fake Hub has no README.md for the captioner: the push starts a card.
    code = evaluate(
        "--captioner", captioner_dir, "--data", corpus_dir, "--held-out", "shape-cnn",
        "--pmi-weights", "0,0.2", "--num-beams", 2, "--metrics", "rouge",
        "--output", tmp_path / "out", "--push-to-hub", "someone/milan-captioner",
    )  # fmt: skip
    assert code == 0
    (download,) = fake_hub.calls_to("hf_hub_download")
    assert (download["repo_id"], download["filename"]) == ("someone/milan-captioner", "README.md")
    (sent,) = fake_hub.calls_to("upload_file")
    assert sent["repo_id"] == "someone/milan-captioner" and sent["path_in_repo"] == "README.md"
    card = fake_hub.sent["someone/milan-captioner"]["README.md"].decode()
    assert "model-index" in card and "PMI λ=0.2" in card and "Concept accuracy" in card


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--pmi-weights", "0,abc"], "'abc' is not a number"),
        (["--pmi-weights", "-1"], "'-1' must be a finite number >= 0"),
        (["--num-beams", "0"], "--num-beams must be at least 1, got 0"),
        (["--metrics", "bleu,meteor"], "unknown ['meteor']"),
        (["--held-out", "no-such-net"], "unknown MILANNOTATIONS name 'no-such-net'"),
        (["--split", "validation"], "validation"),
    ],
)
def test_bad_input_is_named(corpus_dir, captioner_dir, tmp_path, capsys, arguments, message):
    code = evaluate(
        "--captioner", captioner_dir, "--data", corpus_dir, "--output", tmp_path / "out",
        "--metrics", "rouge", *arguments,
    )  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_inputs_and_existing_output(corpus_dir, captioner_dir, tmp_path, capsys):
    assert evaluate("--captioner", tmp_path / "nope", "--data", corpus_dir) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert evaluate("--captioner", "someone/not-cached", "--data", corpus_dir) == 2
    assert "'someone/not-cached' did not load" in capsys.readouterr().err  # offline Hub id
    assert evaluate("--captioner", captioner_dir, "--data", tmp_path / "no" / "data") == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    arguments = ["--captioner", captioner_dir, "--data", corpus_dir, "--output", tmp_path / "out"]
    assert evaluate(*arguments) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
