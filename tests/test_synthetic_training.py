"""Training on synthetic units of known meaning (``milan-hf train --synthetic-units``): alone and
mixed with a corpus, the block feature cache, training seeds only, and the decoding sweep."""

from __future__ import annotations

import json

import pytest
import torch

from milan_hf import training
from milan_hf.decoding_selection import score_descriptions, selection_key
from milan_hf.modeling_milan import MilanCaptionerModel
from milan_hf.probe_world.synthetic_units import BENCHMARK_SEED, SyntheticUnitSettings
from milan_hf.processing_milan import MilanProcessor
from tests.captioner_fixtures import (
    TINY_BACKBONE,
    colour_corpus,
    single_thread,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.usefixtures("single_thread")

# Single colour concepts on 32-px scenes: a trivial setting a tiny model can learn.
TINY_SYNTHETIC = [
    "--synthetic-image-size", "32", "--synthetic-composition-share", "0",
    "--synthetic-validation-units", "12", "--synthetic-units-per-block", "16",
    "--synthetic-scenes-per-block", "24",
]  # fmt: skip
TINY_MODEL = [
    "--backbone", TINY_BACKBONE, "--no-pretrained-backbone", "--image-size", "32",
    "--embedding-size", "16", "--hidden-size", "32", "--dropout", "0", "--prior-layers", "1",
    "--batch-size", "16", "--learning-rate", "0.02", "--max-epochs", "6", "--patience", "6",
    "--prior-max-epochs", "2", "--mask-location-grid", "2", "--sweep-beam-widths", "3",
    "--sweep-pmi-weights", "0", "0.3",
]  # fmt: skip


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    args = ["--synthetic-units", "48", *TINY_SYNTHETIC, *TINY_MODEL]
    metrics = training.main(
        [*args, "--output-dir", str(folder / "captioner"), "--feature-cache-dir",
         str(folder / "cache")]
    )  # fmt: skip
    return folder, metrics


def test_training_on_synthetic_units_alone_learns_and_chooses_its_decoding(synthetic_run):
    folder, metrics = synthetic_run
    history = metrics["captioner_history"]
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert min(e["validation_loss"] for e in history[1:]) < history[0]["validation_loss"]
    assert metrics["sources"] == {"synthetic_training": 48, "synthetic_validation": 12}
    # The kept epoch is the one naming the validation units' concepts most often.
    accuracies = [entry["validation_concept_accuracy"] for entry in history]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert metrics["validation_concept_accuracy"] == max(accuracies)
    sweep = metrics["decoding_sweep"]
    assert len(sweep["table"]) == 2
    assert sweep["winner"] == max(sweep["table"], key=selection_key)
    model = MilanCaptionerModel.from_pretrained(folder / "captioner")
    assert model.config.mask_location_grid == 2
    assert model.generation_config.pmi_weight == sweep["winner"]["pmi_weight"]
    assert model.generation_config.num_beams == sweep["winner"]["num_beams"]
    saved = json.loads((folder / "captioner" / "training_metrics.json").read_text())
    assert saved["decoding_sweep"]["winner"] == sweep["winner"]


def test_trained_beats_untrained_on_validation_units(synthetic_run):
    folder, _ = synthetic_run
    trained = MilanCaptionerModel.from_pretrained(folder / "captioner").eval()
    processor = MilanProcessor.from_pretrained(folder / "captioner")
    torch.manual_seed(1)
    untrained = MilanCaptionerModel(trained.config).eval()
    settings = SyntheticUnitSettings(
        image_size=32, composition_share=0.0, units_per_block=16, scenes_per_block=24
    )
    # The validation seed's units (cached by the run): their descriptions' NLL per model.
    units = training.encode_synthetic_units(
        trained, processor, 500_000, 12, settings, folder / "cache"
    )
    ids = [training.tokenize(processor.tokenizer, texts[:1], 16)[0] for texts in units.descriptions]
    labels = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=0)
    losses = {}
    for name, model in (("trained", trained), ("untrained", untrained)):
        with torch.no_grad():
            output = model(
                exemplar_features=units.features.float(),
                exemplar_mask=units.exemplar_mask,
                input_ids=labels,
                labels=labels,
            )
        losses[name] = output.loss.item()
    assert losses["trained"] < 0.9 * losses["untrained"], losses


def test_mixed_corpus_and_synthetic_units(tmp_path):
    corpus = colour_corpus(units_per_colour=3)
    corpus.save_to_disk(str(tmp_path / "corpus"))
    metrics = training.main(
        ["--dataset", str(tmp_path / "corpus"), "--validation-fraction", "0.25",
         "--synthetic-units", "16", *TINY_SYNTHETIC, *TINY_MODEL, "--max-epochs", "2",
         "--output-dir", str(tmp_path / "captioner"), "--feature-cache-dir",
         str(tmp_path / "cache")]
    )  # fmt: skip
    assert metrics["sources"] == {
        "corpus": len(corpus), "synthetic_training": 16, "synthetic_validation": 12
    }  # fmt: skip
    assert metrics["train_units"] == len(corpus) - 2 + 16
    assert metrics["validation_units"] == 2 + 12
    # The vocabulary covers the grammar's words as well as the corpus's.
    tokenizer = MilanProcessor.from_pretrained(tmp_path / "captioner").tokenizer
    vocabulary = tokenizer.get_vocab()
    assert {"squares", "red", "vertical", "stripes", "left", "either"} <= set(vocabulary)


def test_synthetic_feature_cache_is_reused_and_keyed(tmp_path):
    model = MilanCaptionerModel(
        training.MilanCaptionerConfig(
            vocab_size=8, backbone=TINY_BACKBONE, backbone_pretrained=False, image_size=32,
            embedding_size=8, hidden_size=8, prior_config=None,
        )
    )  # fmt: skip
    processor = MilanProcessor.from_model_config(
        model.config, training.MilanTokenizer.from_words(["red"])
    )
    settings = SyntheticUnitSettings(image_size=32, units_per_block=4, scenes_per_block=20)
    first = training.encode_synthetic_units(model, processor, 3, 6, settings, tmp_path)
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert len(entries) == 2  # blocks of 4 and 2 units
    assert first.features.dtype == torch.float16 and first.features.shape[0] == 6
    again = training.encode_synthetic_units(model, processor, 3, 6, settings, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == entries  # reused, nothing new
    assert torch.equal(again.features, first.features) and again.concepts == first.concepts
    other = training.encode_synthetic_units(model, processor, 4, 4, settings, tmp_path)
    assert len(list(tmp_path.iterdir())) == 3  # another seed: another entry
    assert other.descriptions != first.descriptions[:4]


@pytest.mark.parametrize("option", ["--synthetic-seed", "--synthetic-validation-seed"])
def test_benchmark_seeds_are_refused(tmp_path, option):
    with pytest.raises(ValueError, match=f"{option} {BENCHMARK_SEED}"):
        training.main(
            ["--synthetic-units", "4", option, str(BENCHMARK_SEED), *TINY_MODEL,
             "--output-dir", str(tmp_path / "out")]
        )  # fmt: skip
    with pytest.raises(ValueError, match="both 7"):
        training.main(
            ["--synthetic-units", "4", "--synthetic-seed", "7", "--synthetic-validation-seed",
             "7", *TINY_MODEL, "--output-dir", str(tmp_path / "out")]
        )  # fmt: skip


def test_nothing_to_train_on_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Nothing to train on"):
        training.main([*TINY_MODEL, "--output-dir", str(tmp_path / "out")])


def test_sweep_scoring_prefers_the_setting_that_names_the_concepts():
    expressions = [("concept", "red"), ("and", "blue", "top"), ("concept", "circle")]
    right = ["red areas", "blue things in the top half", "circles"]
    wrong = ["red areas", "nothing in particular", "blue things"]
    good, bad = score_descriptions(right, expressions), score_descriptions(wrong, expressions)
    assert good["strict_accuracy"] == 1.0 and bad["strict_accuracy"] == pytest.approx(1 / 3)
    assert bad["filler_share"] > good["filler_share"]
    rows = [
        {"pmi_weight": 0.0, "num_beams": 5, **bad},
        {"pmi_weight": 0.2, "num_beams": 20, **good},
    ]
    assert max(rows, key=selection_key)["pmi_weight"] == 0.2
    # Ties go to fewer defects, then less filler, then the narrower beam.
    tied = [{"pmi_weight": w, "num_beams": b, **good} for w, b in ((0.1, 20), (0.3, 5))]
    assert max(tied, key=selection_key)["num_beams"] == 5
    defective = {**good, "defects": 1}
    assert (
        max([{"pmi_weight": 0, "num_beams": 5, **defective}, tied[0]], key=selection_key)
        is (tied[0])
    )
