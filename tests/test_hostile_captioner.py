"""Careless or hostile captioner directories: each fails with one line that names the bad value
and says what would work, never with random weights, a traceback or torch's advice to unpickle
with ``weights_only=False``."""

from __future__ import annotations

import json
import pathlib
import re
import shutil

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import milan_hf
from milan_hf.modeling_milan import MilanCaptionerModel
from milan_hf.processing_milan import MilanProcessor
from tests.captioner_fixtures import tiny_captioner, tiny_tokenizer


@pytest.fixture(scope="module")
def good_captioner(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    model = tiny_captioner(tokenizer)
    folder = tmp_path_factory.mktemp("good")
    model.save_pretrained(folder)
    MilanProcessor.from_model_config(model.config, tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture
def captioner(good_captioner, tmp_path):
    """A fresh copy of a good captioner directory, to break."""
    folder = tmp_path / "captioner"
    shutil.copytree(good_captioner, folder)
    return folder


def load_error(folder) -> str:
    """The error loading ``folder`` as a captioner gives: one line, no pickle advice."""
    with pytest.raises((ValueError, FileNotFoundError)) as raised:
        milan_hf.load_captioner(str(folder))
    message = str(raised.value)
    assert "\n" not in message, message
    assert "likely succeed" not in message and "weights_only=False" not in message
    return message


def test_another_models_weights_are_refused_naming_the_keys(captioner):
    weights = captioner / "model.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(weights))
    message = load_error(captioner)
    assert str(captioner) in message
    assert re.search(r"\d+ missing \(attention\.", message), message
    assert re.search(r"\d+ unexpected \(bn1\.", message), message
    with pytest.raises(ValueError, match="do not fit"):
        MilanCaptionerModel.from_pretrained(captioner)


def test_missing_and_unexpected_tensors_are_refused(captioner):
    weights = captioner / "model.safetensors"
    state = load_file(str(weights))
    del state["prior.output.bias"]
    state["stray.weight"] = torch.zeros(2)
    save_file(state, str(weights))
    message = load_error(captioner)
    assert "1 missing (prior.output.bias)" in message
    assert "1 unexpected (stray.weight)" in message


def test_wrong_shapes_are_refused(captioner):
    weights = captioner / "model.safetensors"
    state = load_file(str(weights))
    state["init_h.weight"] = torch.zeros(3, 3)
    save_file(state, str(weights))
    message = load_error(captioner)
    assert str(captioner) in message and "init_h.weight" in message


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_safetensors_give_one_line(captioner, damage):
    weights = captioner / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a tensor" * 9)
    message = load_error(captioner)
    assert str(captioner) in message and "model.safetensors" in message
    assert "save_pretrained" in message  # what would work


def test_a_refused_pickle_names_the_file_and_is_never_run(captioner, tmp_path):
    (captioner / "model.safetensors").unlink()
    ran = tmp_path / "ran"
    # A state dict with a non-tensor object, as a hostile pytorch_model.bin would carry.
    torch.save({"init_h.weight": torch.zeros(1), "payload": pathlib.PurePosixPath(ran)},
               captioner / "pytorch_model.bin")  # fmt: skip
    message = load_error(captioner)
    assert "pytorch_model.bin" in message and str(captioner) in message
    assert "PurePosixPath" in message  # what was refused
    assert "model.safetensors" in message  # what would work
    assert not ran.exists()


def test_a_non_captioner_directory_is_named(tmp_path):
    vision_model = tmp_path / "resnet"
    vision_model.mkdir()
    (vision_model / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    message = load_error(vision_model)
    assert str(vision_model) in message and "'resnet'" in message
    assert "not a MILAN captioner" in message

    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    assert "no config.json" in load_error(images)


def test_a_captioner_without_tokenizer_is_named(captioner):
    (captioner / "tokenizer.json").unlink()
    message = load_error(captioner)
    assert str(captioner) in message and "tokenizer.json" in message
    assert "sentencepiece" not in message.lower()


def test_invalid_config_json_is_named(captioner):
    (captioner / "config.json").write_text("{ not json")
    message = load_error(captioner)
    assert str(captioner) in message and "config.json" in message
