"""Scoring generated descriptions: joins, summaries, concept accuracy, tables, files, cards."""

from __future__ import annotations

import json

import datasets
import evaluate
import pytest
from huggingface_hub import ModelCard

from milan_hf.evaluation import (
    DEFAULT_CONCEPT_SYNONYMS,
    accuracy_by_family_table,
    add_eval_results_to_card,
    concept_accuracy,
    description_names_concept,
    eval_results_from_rows,
    push_eval_results,
    results_table,
    save_evaluation,
    score_descriptions,
    write_results_json,
)
from milan_hf.metrics import load_metric, metric_path


def _predictions(rows):
    return datasets.Dataset.from_dict(
        {
            "layer": [layer for layer, _, _ in rows],
            "unit": [unit for _, unit, _ in rows],
            "description": [text for _, _, text in rows],
        }
    )


def _references(rows):
    return datasets.Dataset.from_dict(
        {
            "layer": [layer for layer, _, _ in rows],
            "unit": [unit for _, unit, _ in rows],
            "descriptions": [texts for _, _, texts in rows],
        }
    )


@pytest.fixture(scope="module")
def metrics():
    # Instances reused by every test; the MiniLM model loads once per process.
    return [load_metric(name) for name in ("bertscore", "bleu", "rouge", "embedding_cosine")]


REFERENCES = _references(
    [
        ("layer1", 0, ["big red circles on top", "red round shapes"]),
        ("layer1", 1, ["vertical stripes", "stripes going up and down"]),
        ("layer2", 0, ["text on signs"]),
    ]
)


# ---- score_descriptions -----------------------------------------------------------------------


def test_score_descriptions_joins_on_units_and_summarises(metrics):
    # Predictions in another order than the references; the output keeps the predictions' order.
    predictions = _predictions(
        [
            ("layer2", 0, "text on signs"),
            ("layer1", 0, "red circles on top"),
            ("layer1", 1, "dog faces"),
        ]
    )
    per_unit, summary = score_descriptions(predictions, REFERENCES, metrics=metrics)

    assert per_unit["unit"] == [0, 0, 1] and per_unit["layer"] == ["layer2", "layer1", "layer1"]
    assert per_unit["references"][1] == ["big red circles on top", "red round shapes"]
    for column in ("bertscore_f1", "sentence_bleu", "rougeL", "cosine_max", "cosine_mean"):
        assert column in per_unit.column_names
    # Identical description: every metric at its maximum.
    assert per_unit["bertscore_f1"][0] == pytest.approx(1.0, abs=1e-5)
    assert per_unit["rougeL"][0] == pytest.approx(1.0)
    assert per_unit["cosine_max"][0] == pytest.approx(1.0, abs=1e-5)
    # ROUGE-L by hand: "red circles on top" vs "big red circles on top": LCS 4, P=1, R=4/5.
    assert per_unit["rougeL"][1] == pytest.approx(2 * 1 * 0.8 / 1.8)
    assert per_unit["rougeL"][2] == 0.0
    # The wrong description scores lower than the right ones on the embedding metrics.
    assert per_unit["bertscore_f1"][2] < per_unit["bertscore_f1"][1]
    assert per_unit["cosine_max"][2] < per_unit["cosine_max"][1]

    assert summary["num_units"] == 3
    assert summary["rougeL"] == pytest.approx(sum(per_unit["rougeL"]) / 3)
    assert summary["bertscore_f1"] == pytest.approx(sum(per_unit["bertscore_f1"]) / 3)
    assert 0.0 <= summary["bleu"] <= 100.0 and len(summary["bleu_precisions"]) == 4
    json.dumps(summary)  # the summary must be JSON-ready


def test_score_descriptions_by_metric_name_with_compute_arguments():
    predictions = _predictions([("layer1", 1, "stripes")])
    references = _references([("layer1", 1, ["stripe"])])
    _, plain = score_descriptions(predictions, references, metrics=["rouge"])
    _, stemmed = score_descriptions(
        predictions, references, metrics=["rouge"], metric_kwargs={"rouge": {"use_stemmer": True}}
    )
    assert plain == {"num_units": 1, "rougeL": 0.0}
    assert stemmed["rougeL"] == pytest.approx(1.0)


def test_texts_are_lowercased_and_stripped_of_dots_unless_asked_not_to():
    predictions = _predictions([("layer1", 1, "Vertical stripes.")])
    references = _references([("layer1", 1, ["vertical stripes", "Stripes going up."])])
    per_unit, normalized = score_descriptions(predictions, references, metrics=["bleu"])
    _, raw = score_descriptions(predictions, references, metrics=["bleu"], normalize=False)
    assert normalized["sentence_bleu"] == pytest.approx(100.0)
    # Unnormalised, sacrebleu sees "Vertical" != "vertical" and the final "." as a token.
    assert raw["sentence_bleu"] < 100.0
    assert per_unit["description"] == ["Vertical stripes."]  # stored as given


def test_metric_kwargs_reach_metric_instances_by_registry_name():
    predictions = _predictions([("layer1", 1, "stripes")])
    references = _references([("layer1", 1, ["stripe"])])
    loaded = evaluate.load(metric_path("rouge"))  # a copy of the class, imported by evaluate
    _, stemmed = score_descriptions(
        predictions, references, [loaded], metric_kwargs={"rouge": {"use_stemmer": True}}
    )
    assert stemmed["rougeL"] == pytest.approx(1.0)


def test_score_descriptions_reads_only_the_needed_columns_of_an_exemplar_set():
    references = REFERENCES.add_column("threshold", [0.5, 0.5, 0.5])
    predictions = _predictions([("layer1", 0, "x"), ("layer1", 1, "y"), ("layer2", 0, "z")])
    per_unit, _ = score_descriptions(predictions, references, metrics=["rouge"])
    assert "threshold" not in per_unit.column_names


def test_units_missing_on_either_side_are_named():
    predictions = _predictions([("layer1", 0, "red"), ("layer9", 4, "blue")])
    with pytest.raises(ValueError) as error:
        score_descriptions(predictions, REFERENCES, metrics=["rouge"])
    message = str(error.value)
    assert "no references for 1 unit(s): layer9/4" in message
    assert "no prediction for 2 unit(s): layer1/1, layer2/0" in message


def test_duplicate_units_and_missing_columns_are_rejected():
    twice = _predictions([("layer1", 0, "red"), ("layer1", 0, "blue")])
    with pytest.raises(ValueError, match=r"predictions dataset has unit \('layer1', 0\) more"):
        score_descriptions(twice, REFERENCES, metrics=["rouge"])
    no_descriptions = REFERENCES.rename_column("descriptions", "summary")
    with pytest.raises(
        ValueError, match=r"references dataset lacks column\(s\) \['descriptions'\]"
    ):
        score_descriptions(_predictions([("layer1", 0, "x")]), no_descriptions, metrics=["rouge"])


def test_units_without_reference_descriptions_and_empty_inputs_are_rejected():
    references = _references([("layer1", 0, [])])
    with pytest.raises(ValueError, match="layer1/0 has no reference descriptions"):
        score_descriptions(_predictions([("layer1", 0, "x")]), references, metrics=["rouge"])
    with pytest.raises(ValueError, match="predictions dataset is empty"):
        score_descriptions(_predictions([]), _references([]), metrics=["rouge"])


# ---- concept accuracy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "concept", "named"),
    [
        ("red things", "red", True),
        ("circles that are red", "red circle", True),  # any order, plural
        ("red squares", "red circle", False),  # every concept word is needed
        ("striped pattern going up", "vertical stripes", False),
        ("vertical lines", "vertical stripes", True),  # synonym
        ("the vertically striped area", "vertical stripes", True),  # stems
        ("lettering on a sign", "text", True),
        ("the upper part of the image", "top", True),
        ("grey round blobs", "gray circle", True),
        ("reddish blobs", "red", False),  # whole words only
        ("the top of the image", "top of image", True),  # concept function words ignored
    ],
)
def test_description_names_concept(description, concept, named):
    assert description_names_concept(description, concept) is named


def test_synonyms_are_configurable():
    assert not description_names_concept("vertical lines", "vertical stripes", synonyms={})
    assert description_names_concept("crimson blobs", "red", synonyms={"red": ["crimson"]})
    with pytest.raises(ValueError, match="single words, got 'polka dot'"):
        description_names_concept("x", "dot", synonyms={"dot": ["polka dot"]})
    assert "circle" in DEFAULT_CONCEPT_SYNONYMS


WORLD_PHRASES = {
    "red": ["crimson", "reddish"],
    "circle": ["discs", "round shapes"],
    "vertical stripes": ["upright bands", "vertical bars"],
    "top": ["the upper half"],
}


@pytest.mark.parametrize(
    ("description", "concept", "named"),
    [
        ("crimson discs", "red circle", True),  # each part by one of its phrases
        ("crimson squares", "red circle", False),
        ("reddish round shapes", "red circle", True),
        ("upright bands", "vertical stripes", True),  # a whole concept by its phrase
        ("vertical lines", "vertical stripes", True),  # the concept's own words still count
        ("bands", "vertical stripes", False),
        ("discs in the upper half", "circle top", True),
        ("crimson discs", "red circle with text", False),  # "text" has no entry: must appear
        ("crimson discs with writing", "red circle with text", True),
    ],
)
def test_concept_phrases_widen_the_match(description, concept, named):
    assert description_names_concept(description, concept, concept_phrases=WORLD_PHRASES) is named


def test_concept_without_content_words_is_rejected():
    with pytest.raises(ValueError, match="Concept 'of the' has no content word"):
        description_names_concept("anything", "of the")


def test_concept_accuracy_overall_and_by_family():
    predictions = _predictions(
        [
            ("planted", 0, "red regions"),
            ("planted", 1, "blue regions"),
            ("planted", 2, "round shapes"),
            ("conv2", 7, "letters and words"),
            ("conv2", 8, "the bottom of the image"),
        ]
    )
    ground_truth = datasets.Dataset.from_dict(
        {
            "layer": ["planted", "planted", "planted", "conv2", "conv2"],
            "unit": [0, 1, 2, 7, 8],
            "concept": ["red", "green", "circle", "text", "top"],
            "family": ["color", "color", "shape", "text", "position"],
        }
    )
    per_unit, summary = concept_accuracy(predictions, ground_truth)
    assert per_unit["correct"] == [True, False, True, True, False]
    assert summary["accuracy"] == pytest.approx(3 / 5)
    assert summary["num_units"] == 5 and summary["num_correct"] == 3
    assert summary["by_family"]["color"] == {"accuracy": 0.5, "num_units": 2, "num_correct": 1}
    assert summary["by_family"]["shape"]["accuracy"] == 1.0
    assert summary["by_family"]["position"]["accuracy"] == 0.0
    assert summary["by_concept"]["green"]["num_correct"] == 0


def test_accuracy_by_family_table():
    rows = {
        "p(d|E) greedy": {
            "accuracy": 0.5,
            "num_units": 4,
            "num_correct": 2,
            "by_family": {
                "color": {"accuracy": 1.0, "num_units": 2, "num_correct": 2},
                "shape": {"accuracy": 0.0, "num_units": 2, "num_correct": 0},
            },
        },
        "PMI λ=0.2": {
            "accuracy": 1.0,
            "num_units": 1,
            "num_correct": 1,
            "by_family": {"text": {"accuracy": 1.0, "num_units": 1, "num_correct": 1}},
        },
    }
    lines = accuracy_by_family_table(rows).splitlines()
    assert lines[0] == "| Method | color | shape | text | All |"
    assert lines[2] == "| p(d\\|E) greedy | 1.000 (2/2) | 0.000 (0/2) | – | 0.500 (2/4) |"
    assert lines[3] == "| PMI λ=0.2 | – | – | 1.000 (1/1) | 1.000 (1/1) |"
    with pytest.raises(ValueError, match="not a concept_accuracy summary"):
        accuracy_by_family_table({"x": {"bleu": 1.0}})


def test_concept_accuracy_accepts_several_concepts_and_no_family():
    predictions = _predictions([("conv1", 0, "red circles"), ("conv1", 1, "blue")])
    ground_truth = datasets.Dataset.from_dict(
        {"layer": ["conv1", "conv1"], "unit": [0, 1], "concept": [["circle", "square"], ["red"]]}
    )
    per_unit, summary = concept_accuracy(predictions, ground_truth)
    assert per_unit["correct"] == [True, False]
    _, with_phrases = concept_accuracy(
        _predictions([("conv1", 0, "crimson discs"), ("conv1", 1, "reddish")]),
        ground_truth,
        concept_phrases=WORLD_PHRASES,
    )
    assert with_phrases["num_correct"] == 2
    assert per_unit["concept"][0] == "circle | square"
    assert summary["by_family"] == {"all": {"accuracy": 0.5, "num_units": 2, "num_correct": 1}}


def test_concept_accuracy_names_missing_units():
    predictions = _predictions([("conv1", 0, "red")])
    ground_truth = datasets.Dataset.from_dict({"layer": ["conv1"], "unit": [5], "concept": ["red"]})
    with pytest.raises(ValueError, match="no ground-truth concepts for 1 unit\\(s\\): conv1/0"):
        concept_accuracy(predictions, ground_truth)


# ---- tables and files ------------------------------------------------------------------------

ROWS = {
    "NetDissect baseline": {"bertscore_f1": 0.2412, "bleu": 3.21, "rougeL": 0.1, "num_units": 40},
    "p(d|E) greedy": {"bertscore_f1": 0.3391, "bleu": 12.345, "rougeL": 0.3, "num_units": 40},
    "PMI λ=0.2": {"bertscore_f1": 0.38, "bleu": float("nan"), "num_units": 40},
}


def test_results_table_renders_markdown():
    table = results_table(ROWS)
    lines = table.strip().splitlines()
    assert lines[0] == "| Method | BERTScore F1 | BLEU | ROUGE-L | Units |"
    assert lines[1] == "|---|---:|---:|---:|---:|"
    assert lines[2] == "| NetDissect baseline | 0.241 | 3.2 | 0.100 | 40 |"
    assert lines[3] == "| p(d\\|E) greedy | 0.339 | 12.3 | 0.300 | 40 |"
    assert lines[4] == "| PMI λ=0.2 | 0.380 | – | – | 40 |"
    assert results_table(ROWS, columns=["bleu"]).splitlines()[0] == "| Method | BLEU |"
    with pytest.raises(ValueError, match="at least one method"):
        results_table({})


def test_write_results_json_is_valid_json(tmp_path):
    path = write_results_json(tmp_path / "out" / "results.json", ROWS, {"split": "test"})
    document = json.loads(path.read_text())
    assert document["metadata"] == {"split": "test"}
    assert document["results"]["PMI λ=0.2"]["bleu"] is None  # NaN is not JSON
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left


def test_save_evaluation_writes_table_json_and_per_unit_dataset(tmp_path):
    per_unit, summary = score_descriptions(
        _predictions([("layer1", 0, "red circles on top")]), REFERENCES.select([0]), ["rouge"]
    )
    output = save_evaluation(
        tmp_path / "eval",
        {"p(d|E) beam": summary},
        per_unit={"p(d|E) beam": per_unit, "PMI λ=0.2": per_unit},
        metadata={"title": "probe world, held-out networks"},
    )
    assert (output / "results.md").read_text().startswith("# probe world, held-out networks\n")
    assert json.loads((output / "results.json").read_text())["results"]["p(d|E) beam"]
    reloaded = datasets.load_from_disk(str(output / "per_unit"))
    assert reloaded["method"] == ["p(d|E) beam", "PMI λ=0.2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # staging folder renamed
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_evaluation(output, {"x": summary})
    save_evaluation(output, {"x": summary}, overwrite=True)
    assert not (output / "per_unit").exists()


# ---- model cards -----------------------------------------------------------------------------

CARD_TEXT = "---\nlicense: mit\nlibrary_name: milan-hf\n---\n\n# MILAN captioner\n\nSome text.\n"


def test_eval_results_from_rows_one_per_method_and_metric():
    results = eval_results_from_rows(ROWS, "MILANNOTATIONS", "milan-hf/milannotations", "test")
    # 3 + 3 + 1 present, finite card metrics (NaN BLEU is skipped).
    assert len(results) == 7
    pmi = [r for r in results if r.metric_config == "PMI λ=0.2"]
    assert [(r.metric_type, r.metric_value) for r in pmi] == [("bertscore", 0.38)]
    assert pmi[0].metric_name == "BERTScore F1 (PMI λ=0.2)"
    assert pmi[0].dataset_split == "test" and pmi[0].task_type == "image-to-text"
    with pytest.raises(ValueError, match="No card metric"):
        eval_results_from_rows({"x": {"num_units": 3}}, "d")


def test_add_eval_results_to_card_renders_model_index(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(CARD_TEXT)
    card = add_eval_results_to_card(
        path, ROWS, "Probe world", "probe-world", "heldout", model_name="milan-probe"
    )
    rendered = str(card)
    assert "model-index:" in rendered and "name: milan-probe" in rendered
    assert "BERTScore F1 (p(d|E) greedy)" in rendered
    assert rendered.rstrip().endswith("Some text.")

    reloaded = ModelCard(rendered)
    assert reloaded.data.license == "mit"
    values = {(r.metric_config, r.metric_type): r.metric_value for r in reloaded.data.eval_results}
    assert values[("p(d|E) greedy", "bertscore")] == 0.3391
    assert values[("NetDissect baseline", "bleu")] == 3.21

    # Adding again updates values instead of duplicating entries.
    updated_rows = {"p(d|E) greedy": {"bertscore_f1": 0.5}}
    again = add_eval_results_to_card(
        reloaded, updated_rows, "Probe world", "probe-world", "heldout"
    )
    assert len(again.data.eval_results) == len(reloaded.data.eval_results)
    greedy = [r for r in again.data.eval_results if r.metric_name == "BERTScore F1 (p(d|E) greedy)"]
    assert [r.metric_value for r in greedy] == [0.5]


def test_add_eval_results_to_card_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file"):
        add_eval_results_to_card(tmp_path / "missing.md", ROWS, "d")
    with pytest.raises(ValueError, match="pass model_name="):
        add_eval_results_to_card(ModelCard(CARD_TEXT), ROWS, "d")


def test_push_eval_results_uploads_the_updated_card(fake_hub):
    fake_hub.remote_files["user/milan-captioner"] = {"README.md": CARD_TEXT}
    result = push_eval_results(
        "user/milan-captioner", ROWS, "Probe world", dataset_split="heldout", create_pr=True
    )
    (download,) = fake_hub.calls_to("hf_hub_download")
    assert download == {
        "repo_id": "user/milan-captioner",
        "filename": "README.md",
        "revision": None,
    }
    (sent,) = fake_hub.calls_to("upload_file")
    assert result.commit_url.startswith("https://huggingface.co/user/milan-captioner/commit/")
    assert sent["repo_id"] == "user/milan-captioner" and sent["path_in_repo"] == "README.md"
    assert sent["create_pr"] is True and sent["commit_message"].endswith("on Probe world")
    card = ModelCard(fake_hub.sent["user/milan-captioner"]["README.md"].decode("utf-8"))
    assert card.data.model_name == "milan-captioner"
    assert len(card.data.eval_results) == 7
    assert "# MILAN captioner" in card.text


def test_push_eval_results_starts_a_card_when_the_repo_has_none(fake_hub):
    push_eval_results("user/new-model", ROWS, "Probe world")  # the fake Hub has no README.md
    assert len(fake_hub.calls_to("hf_hub_download")) == 1
    card = ModelCard(fake_hub.sent["user/new-model"]["README.md"].decode("utf-8"))
    assert card.data.library_name == "milan-hf"
    assert card.data.eval_results[0].dataset_name == "Probe world"
