"""milan_hf.training (``milan-hf train``): a tiny captioner learns a tiny corpus; saving; the Hub
push."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from milan_hf import cli, training
from milan_hf.image_processing_milan import MilanImageProcessor
from milan_hf.modeling_milan import MilanCaptionerModel
from milan_hf.processing_milan import MilanProcessor
from tests.captioner_fixtures import (
    TINY_BACKBONE,
    colour_corpus,
    single_thread,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_ARGS = [
    "--backbone", TINY_BACKBONE, "--no-pretrained-backbone", "--image-size", "32",
    "--embedding-size", "16", "--hidden-size", "32", "--dropout", "0", "--prior-layers", "1",
    "--batch-size", "8", "--learning-rate", "0.03", "--max-epochs", "12", "--patience", "12",
    "--prior-max-epochs", "3", "--validation-fraction", "0.25",
]  # fmt: skip


def test_tiny_captioner_learns_its_corpus_and_pushes_to_hub(tmp_path, fake_hub):
    corpus = colour_corpus(units_per_colour=4)
    corpus.save_to_disk(str(tmp_path / "corpus"))

    output_dir = tmp_path / "captioner"
    metrics = training.main(
        [
            "--dataset",
            str(tmp_path / "corpus"),
            "--output-dir",
            str(output_dir),
            "--feature-cache-dir",
            str(tmp_path / "cache"),
            "--push-to-hub",
            "someone/milan-tiny",
            "--dataset-name",
            "colour squares",
            *TINY_ARGS,
        ]  # fmt: skip
    )

    history = metrics["captioner_history"]
    assert min(entry["validation_loss"] for entry in history) < 0.5 * history[0]["validation_loss"]
    assert (
        metrics["prior_history"][-1]["validation_loss"]
        < metrics["prior_history"][0]["validation_loss"]
    )
    assert metrics["validation_bleu"] > 50

    # The saved captioner reproduces its training descriptions.
    model = MilanCaptionerModel.from_pretrained(output_dir)
    processor = MilanProcessor.from_pretrained(output_dir)
    rows = [corpus[index] for index in range(len(corpus))]
    output = model.generate(**processor(rows), pmi_weight=0.0, num_beams=3)
    descriptions = processor.batch_decode(output.sequences)
    reproduced = [d in row["descriptions"] for d, row in zip(descriptions, rows)]
    assert all(reproduced), list(zip(descriptions, [r["descriptions"] for r in rows]))
    assert model.generate(**processor(rows[:2]), num_beams=3).prior_log_probs is not None

    # Written atomically: no temporary folders left beside the result.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "captioner", "corpus"]
    assert len(list((tmp_path / "cache").iterdir())) == 1
    saved = json.loads((output_dir / "training_metrics.json").read_text())
    assert saved["validation_bleu"] == metrics["validation_bleu"]

    # What the Hub would receive.
    assert fake_hub.calls_to("create_repo") == [
        {"repo_id": "someone/milan-tiny", "repo_type": "model", "private": False, "exist_ok": True}
    ]
    (upload,) = fake_hub.calls_to("upload_folder")
    assert upload["repo_id"] == "someone/milan-tiny"
    uploaded = fake_hub.sent["someone/milan-tiny"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(uploaded)
    card = uploaded["README.md"].decode()
    assert "# MILAN captioner: someone/milan-tiny" in card
    assert "colour squares: 9 units" in card
    assert f"{metrics['validation_bleu']:.2f}" in card
    assert "hernandez2022natural" in card and "## Limitations" in card and "$" not in card


def test_training_inputs_are_checked(tmp_path, capsys):
    corpus = colour_corpus(units_per_colour=1)
    corpus.remove_columns("descriptions").to_parquet(str(tmp_path / "no_descriptions.parquet"))
    with pytest.raises(ValueError, match="lacks the 'descriptions' column"):
        training.main(
            [
                "--dataset",
                str(tmp_path / "no_descriptions.parquet"),
                "--output-dir",
                str(tmp_path / "o"),
            ]
        )
    with pytest.raises(FileNotFoundError, match="nowhere"):
        training.main(["--dataset", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "o")])
    # Through the command line: one line naming the bad value, exit code 2.
    capsys.readouterr()
    assert cli.main(["train", "--dataset", str(tmp_path / "nowhere"), "--output-dir", "o"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("milan-hf train: error: ") and "nowhere" in error
    assert error.count("\n") == 1
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        training.main(["--dataset", "x", "--output-dir", str(tmp_path / "taken")])
    with pytest.raises(ValueError, match="at least 2 units"):
        training.split_units(1, 0.1, seed=0)
    train, validation = training.split_units(10, 0.2, seed=0)
    assert len(validation) == 2 and sorted(train + validation) == list(range(10))
    assert torch.equal(torch.tensor(training.split_units(10, 0.2, seed=0)[0]), torch.tensor(train))


def test_reads_milannotations_format_directories(tmp_path):
    from tests.milannotations_fixture import MASK_SIZE, write_set

    write_set(tmp_path, "alexnet/places365", seed=0)  # Places sets ship their images
    dataset = training.load_exemplar_dataset(
        "alexnet/places365", data_dir=str(tmp_path), split="train"
    )
    row = dataset[0]
    assert len(row["descriptions"]) == 3 and len(row["images"]) == len(row["masks"])
    batch = MilanImageProcessor(image_size=MASK_SIZE)(row)
    assert batch["pixel_values"].shape[1:] == (len(row["images"]), 3, MASK_SIZE, MASK_SIZE)


def test_embedded_recipe_brings_exemplar_sets_to_the_captioner_size():
    from milan_hf.embedded_training import resize_exemplar_set

    corpus = colour_corpus(units_per_colour=1, size=32)
    resized = resize_exemplar_set(corpus, 16)
    for original, row in zip(corpus, resized):
        assert row["images"][0].size == (16, 16)
        mask = np.asarray(row["masks"][0])
        assert mask.shape == (16, 16) and set(np.unique(mask)) <= {0, 1}
        # A 16-pixel square at 32 pixels is about an 8-pixel square at 16, wherever it was.
        assert abs(int(mask.sum()) - int(np.asarray(original["masks"][0]).sum()) // 4) <= 16
    assert resize_exemplar_set(resized, 16) is resized  # already that size: untouched


def test_embedded_card_describes_the_encoder_and_carries_the_benchmark(tmp_path):
    from milan_hf.configuration_milan import MilanCaptionerConfig
    from milan_hf.embedded_training import benchmark_text, encoder_extras

    original = MilanCaptionerConfig(vocab_size=8, backbone="test_efficientnet")
    assert "original MILAN" in encoder_extras(original)
    extended = MilanCaptionerConfig(
        vocab_size=8,
        backbone="test_efficientnet",
        mask_location_grid=4,
        mask_context_pooling=True,
        exemplar_feature_norm=True,
    )
    text = encoder_extras(extended)
    for name in ("4×4", "mask_location_grid", "mask_context_pooling", "exemplar_feature_norm"):
        assert name in text
    assert "--benchmark-results" in benchmark_text(None)
    results = tmp_path / "results.md"
    results.write_text("## Known-unit benchmark\n\n| part | units |\n|---|---:|\n| planted | 3 |\n")
    assert benchmark_text(results) == "| part | units |\n|---|---:|\n| planted | 3 |"
