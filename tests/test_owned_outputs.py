"""--overwrite of a trained captioner's --output-dir replaces only what milan_hf wrote."""

from __future__ import annotations

import json

import pytest

from milan_hf import training
from milan_hf.processing_milan import MilanProcessor
from tests.captioner_fixtures import tiny_captioner, tiny_tokenizer


@pytest.fixture(scope="module")
def captioner():
    tokenizer = tiny_tokenizer()
    model = tiny_captioner(tokenizer)
    return model, MilanProcessor.from_model_config(model.config, tokenizer)


def save(captioner, output_dir, overwrite: bool) -> None:
    model, processor = captioner
    training.save_atomically(model, processor, output_dir, {"epochs": 1}, "card", overwrite)


def test_overwrite_replaces_a_trained_captioner_but_not_a_foreign_folder(captioner, tmp_path):
    output = tmp_path / "captioner"
    save(captioner, output, overwrite=False)
    (output / "README.md").write_text("stale")
    save(captioner, output, overwrite=True)  # milan_hf's own folder: replaced
    assert (output / "README.md").read_text() == "card"
    assert json.loads((output / training.METRICS_FILE).read_text()) == {"epochs": 1}

    (output / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        save(captioner, output, overwrite=True)
    assert (output / "notes.txt").read_text() == "mine"

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(FileExistsError, match=f"no {training.METRICS_FILE}"):
        save(captioner, foreign, overwrite=True)
    assert [p.name for p in foreign.iterdir()] == ["cat.jpg"]
