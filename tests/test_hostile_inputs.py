"""Issue 11, model and image inputs: what a careless or hostile user passes gets a correct result
or one line that names the bad value and what works; never a wrong result with exit 0."""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import socket
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from milan_hf import schema
from milan_hf.exemplars import LayerTaps, extract_exemplars
from milan_hf.milannotations import load_milannotations
from milan_hf.probe_images import load_probe_images, probe_fingerprint
from milan_hf.vision_models import load_vision_model, weights_digest
from tests.tiny_models import tiny_vit_directory

try:  # tests/ is a package in some checkouts and a plain folder in others
    from tests import milannotations_fixture as fixture
    from tests.test_exemplars import SIZE, write_images
except ImportError:
    import milannotations_fixture as fixture
    from test_exemplars import SIZE, write_images

TINY_TIMM = "test_resnet"  # timm's own 0.5M-parameter test model: no download, fast


@pytest.fixture(scope="module")
def probe_folder(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("probe"), 12)


class Evil:
    """Pickles to a call of os.system: what a malicious checkpoint holds."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def state_of(name: str, seed: int) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}


def assert_one_line_without_unsafe_advice(error: pytest.ExceptionInfo) -> None:
    text = str(error.value)
    assert "\n" not in text, text
    assert "will likely succeed" not in text and "weights_only=False" not in text, text


# -- random-initialised models ----------------------------------------------------------------


def test_untrained_timm_model_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = weights_digest(load_vision_model(TINY_TIMM).module)
    assert torch.rand(1) == expected_next  # the caller's RNG stream is untouched
    assert weights_digest(load_vision_model(TINY_TIMM).module) == first
    assert weights_digest(load_vision_model(TINY_TIMM, seed=1).module) != first
    # seed 0 is what torch.manual_seed(0) + timm.create_model gives
    import timm

    torch.manual_seed(0)
    assert weights_digest(timm.create_model(TINY_TIMM)) == first


def test_two_extractions_of_an_untrained_model_agree(probe_folder):
    def run(seed: int) -> datasets.Dataset:
        return extract_exemplars(
            TINY_TIMM, ["layer1"], str(probe_folder), k=2, seed=seed, progress=False
        )

    first, second, other = run(0), run(0), run(5)
    assert first[schema.ACTIVATIONS] == second[schema.ACTIVATIONS]
    assert first[schema.IDS] == second[schema.IDS]
    assert first[schema.ACTIVATIONS] != other[schema.ACTIVATIONS]


def test_untrained_model_warns_once(caplog):
    with caplog.at_level(logging.WARNING, logger="milan_hf.vision_models"):
        load_vision_model(TINY_TIMM, seed=77)
        load_vision_model(TINY_TIMM, seed=77)
    warnings = [r for r in caplog.records if "random weights" in r.getMessage()]
    assert len(warnings) == 1 and "seed 77" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="milan_hf.vision_models"):
        load_vision_model(TINY_TIMM, checkpoint=None, pretrained=False, seed=77)
        assert not caplog.records  # already said in this process


def _digest_on_rank(rank: int, port: int, folder: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    # each rank asks for another seed: rank 0's weights must win anyway
    model = load_vision_model(TINY_TIMM, seed=rank)
    Path(folder, f"{rank}.txt").write_text(weights_digest(model.module))
    torch.distributed.destroy_process_group()


def test_every_process_of_a_distributed_run_takes_rank_zero_weights(tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_digest_on_rank, args=(rank, port, str(tmp_path))) for rank in (0, 1)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
        assert process.exitcode == 0
    digests = {(tmp_path / f"{rank}.txt").read_text() for rank in (0, 1)}
    expected = weights_digest(load_vision_model(TINY_TIMM, seed=0).module)
    assert digests == {expected}


# -- pretrained weights offline ---------------------------------------------------------------


def test_pretrained_offline_and_not_cached_fails_at_once_naming_checkpoint(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"not in the local cache.*--checkpoint") as error:
        load_vision_model(TINY_TIMM, pretrained=True)
    assert time.monotonic() - start < 5
    assert "HF_HUB_OFFLINE" in str(error.value) and "\n" not in str(error.value)


def test_pretrained_with_the_hub_unreachable_fails_at_once(monkeypatch, tmp_path):
    from huggingface_hub import constants

    with socket.socket() as closed:  # a port nobody listens on: connection refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"cannot be reached.*--checkpoint"):
        load_vision_model(TINY_TIMM, pretrained=True)
    assert time.monotonic() - start < 10


def test_pretrained_weights_in_the_local_cache_load_offline(monkeypatch, tmp_path):
    import timm
    from huggingface_hub import constants

    repo = timm.models.get_pretrained_cfg(TINY_TIMM).hf_hub_id
    snapshot = tmp_path / "cache" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    weights = state_of(TINY_TIMM, seed=9)
    save_file(weights, snapshot / "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = load_vision_model(TINY_TIMM, pretrained=True)
    assert torch.equal(model.module.state_dict()["conv1.0.weight"], weights["conv1.0.weight"])


def test_hub_model_not_in_the_cache_offline_is_named(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"'hf-hub:timm/nothing' is not in the local"):
        load_vision_model("hf-hub:timm/nothing")


# -- bad weight files ------------------------------------------------------------------------


def test_truncated_safetensors_checkpoint_is_one_line(tmp_path):
    save_file(state_of(TINY_TIMM, 0), tmp_path / "w.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((tmp_path / "w.safetensors").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"truncated.safetensors is not a readable safetensors"):
        load_vision_model(TINY_TIMM, checkpoint=truncated)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.safetensors is not a readable") as error:
        load_vision_model(TINY_TIMM, checkpoint=tmp_path / "empty.safetensors")
    assert "\n" not in str(error.value)


def test_state_dict_with_wrong_shapes_names_the_keys(tmp_path):
    weights = state_of(TINY_TIMM, 0)
    weights["fc.weight"] = torch.zeros(10, weights["fc.weight"].shape[1])
    weights["fc.bias"] = torch.zeros(10)
    torch.save(weights, tmp_path / "ten_classes.pt")
    with pytest.raises(ValueError, match=r"wrong shapes for \['fc.weight \(10, \d+\) \(model "):
        load_vision_model(TINY_TIMM, checkpoint=tmp_path / "ten_classes.pt")


def test_pickled_code_in_a_checkpoint_is_refused_without_torch_advice(tmp_path):
    torch.save({"conv1.0.weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(
        ValueError, match=r"refused to load .*evil.pt.*GLOBAL posix.system"
    ) as error:
        load_vision_model(TINY_TIMM, checkpoint=tmp_path / "evil.pt")
    assert_one_line_without_unsafe_advice(error)


def test_pickled_code_inside_a_timm_directory_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architecture": TINY_TIMM}))
    torch.save({"conv1.0.weight": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"refused to load .*pytorch_model.bin") as error:
        load_vision_model(str(tmp_path))
    assert_one_line_without_unsafe_advice(error)


def test_truncated_weights_inside_a_timm_directory_are_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architecture": TINY_TIMM}))
    save_file(state_of(TINY_TIMM, 0), tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors"):
        load_vision_model(str(tmp_path))


def test_pickled_code_inside_a_transformers_directory_is_refused(tmp_path):
    folder = tiny_vit_directory(tmp_path / "vit", SIZE)
    (folder / "model.safetensors").unlink()
    torch.save({"embeddings.cls_token": Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"refused to load the weights in .*GLOBAL posix") as error:
        load_vision_model(str(folder))
    assert_one_line_without_unsafe_advice(error)


def test_truncated_weights_inside_a_transformers_directory_are_named(tmp_path):
    folder = tiny_vit_directory(tmp_path / "vit", SIZE)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"safetensors weights in .*vit are not readable"):
        load_vision_model(str(folder))


def test_another_models_weights_in_a_transformers_directory_are_refused(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    folder = tiny_vit_directory(tmp_path / "vit", SIZE)
    other = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1]))
    save_file(
        {k: v.contiguous() for k, v in other.state_dict().items()}, folder / "model.safetensors"
    )
    with pytest.raises(ValueError, match=r"do not fit its config: \d+ missing keys"):
        load_vision_model(str(folder))


def test_a_directory_as_checkpoint_names_the_file_to_pass(tmp_path):
    save_file(state_of(TINY_TIMM, 0), tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"is a directory: pass .*model.safetensors"):
        load_vision_model(TINY_TIMM, checkpoint=tmp_path)


# -- probe images ----------------------------------------------------------------------------


def gradient(high: int) -> np.ndarray:
    return np.linspace(0, high, 32 * 32).reshape(32, 32)


@pytest.mark.parametrize(
    ("name", "pixels", "expected_max"),
    [
        ("sixteen_bit.png", gradient(65535).astype(np.uint16), 255),  # opens as I;16
        ("sixteen_bit_dim.png", gradient(32767).astype(np.uint16), 127),  # range, not min/max
        ("int32.tif", gradient(1_000_000).astype(np.int32) - 3000, 255),  # I: by min..max
        ("float_unit.tif", gradient(1).astype(np.float32), 255),  # F in 0..1
        ("float_wide.tif", gradient(1).astype(np.float32) * 40 - 7, 255),  # F: by min..max
    ],
)
def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path, name, pixels, expected_max):
    Image.fromarray(pixels).save(tmp_path / name)
    rgb = np.asarray(load_probe_images(str(tmp_path)).open_image(0))
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert rgb.min() == 0 and rgb.max() == expected_max  # a gradient, not solid white
    assert len(np.unique(rgb)) > 100 or expected_max < 255


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 30, 3), dtype=np.uint8)
    pixels[:, :10] = 255  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turns it 90° clockwise
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=95)
    image = np.asarray(load_probe_images(str(tmp_path)).open_image(0))
    assert image.shape == (30, 10, 3)
    assert image[:10].mean() > 200 and image[-10:].mean() < 50  # white on top once upright


def test_probe_set_edited_in_place_changes_its_fingerprint(tmp_path):
    folder = write_images(tmp_path / "probe", 4)
    before = probe_fingerprint(load_probe_images(str(folder)))
    assert probe_fingerprint(load_probe_images(str(folder))) == before
    victim = sorted(folder.glob("*.png"))[1]
    Image.new("RGB", (44, 40), "red").save(victim)  # same name, same count, other pixels
    after = probe_fingerprint(load_probe_images(str(folder)))
    assert after["num_images"] == before["num_images"] and after["path"] == before["path"]
    assert after["content"] != before["content"]


def test_split_on_single_split_data_names_what_there_is(tmp_path):
    folder = write_images(tmp_path / "probe", 2)
    with pytest.raises(ValueError, match=r"split 'test' not in the image folder .*no named"):
        load_probe_images(str(folder), split="test")
    dataset = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))]}, split="train")
    dataset.to_parquet(str(tmp_path / "probe.parquet"))
    with pytest.raises(ValueError, match=r"split 'validation' not in .*probe.parquet: its one"):
        load_probe_images(str(tmp_path / "probe.parquet"), split="validation")
    dataset.save_to_disk(str(tmp_path / "disk"))
    with pytest.raises(ValueError, match=r"split 'test' not in .*disk: its one split is 'train'"):
        load_probe_images(str(tmp_path / "disk"), split="test")
    assert len(load_probe_images(str(tmp_path / "disk"), split="train")) == 1


# -- MILANNOTATIONS ----------------------------------------------------------------------------


def small_set(root: Path, annotated_units: int) -> Path:
    fixture.write_set(root, "alexnet/places365", seed=0)
    annotations = root / "alexnet" / "places365" / "annotations.csv"
    header, *rows = list(csv.reader(annotations.open()))
    counts: dict[tuple[str, int], int] = {}
    for layer, unit, _ in rows:
        counts[layer, int(unit)] = counts.get((layer, int(unit)), 0) + 1
    units = sorted(unit for unit, count in counts.items() if count >= 3)[:annotated_units]
    kept = [row for row in rows if (row[0], int(row[1])) in units]
    with annotations.open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *kept])
    return root


def test_a_set_too_small_for_a_test_split_loads(tmp_path):
    root = small_set(tmp_path / "data", annotated_units=4)
    cache = str(tmp_path / "cache")
    splits = load_milannotations("alexnet/places365", data_dir=root, cache_dir=cache)
    assert (splits["train"].num_rows, splits["test"].num_rows) == (4, 0)
    assert splits["test"].features == splits["train"].features
    test = load_milannotations("alexnet/places365", data_dir=root, cache_dir=cache, split="test")
    assert test.num_rows == 0
    with pytest.raises(ValueError, match=r"split 'test\[:50%\]' reads the empty split"):
        load_milannotations("alexnet/places365", data_dir=root, cache_dir=cache, split="test[:50%]")


# -- layer outputs -----------------------------------------------------------------------------


class AttentionNet(torch.nn.Module):
    """A miniature ViT block whose ``attn`` module returns per-head (B, heads, tokens, d)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patches = torch.nn.Conv2d(3, 16, 8, stride=8)  # 32x32 -> 4x4 = 16 tokens
        self.attn = torch.nn.Identity()

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)  # (B, 16, 16)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)  # + CLS: 17
        return self.attn(tokens.view(x.shape[0], 17, 2, 8).transpose(1, 2))  # (B, 2, 17, 8)


def test_attention_output_is_refused_naming_its_shape(probe_folder):
    with pytest.raises(ValueError, match=r"'attn' outputs shape \(\d+, 2, 17, 8\), which is no"):
        extract_exemplars(
            AttentionNet(), ["attn"], str(probe_folder), k=2, input_size=SIZE, progress=False
        )


class ChannelsLastNet(torch.nn.Module):
    """A conv stage followed by a module returning (B, H, W, C), as timm Swin stages do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=4, padding=1)  # (B, 6, 8, 8)
        self.stage = torch.nn.Identity()

    def forward(self, x):
        return self.stage(self.conv(x).permute(0, 2, 3, 1))


def test_channels_last_output_is_read_as_channels_last(probe_folder):
    nhwc = extract_exemplars(
        ChannelsLastNet(), ["stage"], str(probe_folder), k=2, input_size=SIZE, progress=False
    )
    nchw = extract_exemplars(
        ChannelsLastNet(), ["conv"], str(probe_folder), k=2, input_size=SIZE, progress=False
    )
    assert len(nhwc) == 6  # six channels, not eight "units" of 8x6 maps
    assert nhwc[schema.ACTIVATIONS] == nchw[schema.ACTIVATIONS]
    assert nhwc[schema.IDS] == nchw[schema.IDS]


def test_timm_swin_stage_is_read_as_channels_last():
    import timm

    swin = load_vision_model(
        timm.create_model("swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1), embed_dim=32)
    )
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        raw = swin.module.layers[1](swin.module.layers[0](swin.module.patch_embed(pixels)))
        with LayerTaps(swin, ["layers.1"]) as taps:
            maps = taps.run(pixels)["layers.1"]
    assert tuple(raw.shape) == (1, 28, 28, 64)
    assert torch.equal(maps, raw.permute(0, 3, 1, 2))


# -- through the command line ------------------------------------------------------------------


def cli(*arguments: str) -> int:
    from milan_hf.cli import main

    return main(["exemplars", *arguments])


def test_cli_seed_reaches_the_model(tmp_path, probe_folder):
    common = ["--model", TINY_TIMM, "--layers", "layer1", "--images", str(probe_folder), "--k", "2"]
    assert cli(*common, "--seed", "4", "--output", str(tmp_path / "four")) == 0
    from milan_hf.exemplar_storage import load_exemplars

    saved = load_exemplars(tmp_path / "four")
    expected = extract_exemplars(
        TINY_TIMM, ["layer1"], str(probe_folder), k=2, seed=4, progress=False
    )
    assert saved[schema.ACTIVATIONS] == expected[schema.ACTIVATIONS]


def test_cli_bad_checkpoints_are_one_line_and_exit_2(tmp_path, probe_folder, capsys):
    torch.save({"conv1.0.weight": Evil()}, tmp_path / "evil.pt")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    (tmp_path / "a_folder").mkdir()  # beside the output: an output inside an input is refused
    for checkpoint, expected in [
        (tmp_path / "evil.pt", "refused to load"),
        (tmp_path / "cut.safetensors", "is not a readable safetensors file"),
        (tmp_path / "a_folder", "is a directory"),
    ]:
        code = cli(
            *["--model", TINY_TIMM, "--layers", "layer1", "--images", str(probe_folder)],
            *["--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")],
        )
        error = capsys.readouterr().err.strip()
        assert code == 2 and expected in error and "\n" not in error, error
        assert "will likely succeed" not in error


# -- ignored arguments -------------------------------------------------------------------------


def test_input_size_of_a_timm_model_is_applied_not_ignored(probe_folder):
    exemplars = extract_exemplars(
        TINY_TIMM, ["layer1"], str(probe_folder), k=2, input_size=(48, 64), progress=False
    )
    assert np.asarray(exemplars[0][schema.MASKS]).shape == (2, 48, 64)
    with pytest.raises(ValueError, match=r"test_vit only takes 160x160 inputs, not input_size=64"):
        load_vision_model("test_vit", input_size=64)


def test_input_size_of_a_transformers_model_is_refused(tmp_path):
    folder = tiny_vit_directory(tmp_path / "vit", SIZE)
    with pytest.raises(ValueError, match=r"input_size=16 cannot be applied to .*image processor"):
        load_vision_model(str(folder), input_size=16)


def test_reopening_a_probe_set_edited_in_place_is_refused(tmp_path):
    from milan_hf.probe_images import probe_images_from_source

    folder = write_images(tmp_path / "probe", 3)
    recorded = probe_fingerprint(load_probe_images(str(folder)))
    assert len(probe_images_from_source(recorded)) == 3
    Image.new("RGB", (44, 40), "red").save(sorted(folder.glob("*.png"))[0])
    with pytest.raises(ValueError, match=r"changed since the exemplars were extracted"):
        probe_images_from_source(recorded)


def test_milannotations_bad_arguments_are_named(tmp_path):
    root = small_set(tmp_path / "data", annotated_units=4)
    for keywords, message in [
        ({"test_fraction": 1.5}, r"test_fraction must be in \[0, 1\), got 1.5"),
        ({"test_fraction": -0.1}, r"test_fraction must be in \[0, 1\), got -0.1"),
        ({"seed": -1}, r"seed must be a non-negative integer, got -1"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_milannotations("all", data_dir=root, cache_dir=str(tmp_path / "c"), **keywords)
    (tmp_path / "images" / "x").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no MILANNOTATIONS sets in .*images"):
        load_milannotations("all", data_dir=tmp_path / "images", cache_dir=str(tmp_path / "c"))


class WindowedNet(torch.nn.Module):
    """Like a Swin attention block: windows folded into the batch axis, (B * 4, 16, C)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=4, padding=1)  # (B, 6, 8, 8)
        self.attn = torch.nn.Identity()

    def forward(self, x):
        maps = self.conv(x)  # four 4x4 windows per image
        windows = maps.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 4, 5, 1)
        return self.attn(windows.reshape(-1, 16, 6))


def test_windows_folded_into_the_batch_axis_are_refused(probe_folder):
    with pytest.raises(ValueError, match=r"'attn' outputs shape \((\d+), 16, 6\) for a batch of"):
        extract_exemplars(
            WindowedNet(), ["attn"], str(probe_folder), k=2, input_size=SIZE, progress=False
        )


def test_an_extremely_elongated_image_is_skipped_not_blown_up(tmp_path):
    from milan_hf.exemplars import exemplar_metadata

    folder = write_images(tmp_path / "probe", 3)
    # Resize(shorter side) would make this 168 x 3.4M pixels: 6.8 GB of floats
    Image.new("RGB", (1, 20_000), "white").save(folder / "sliver.png")
    exemplars = extract_exemplars(TINY_TIMM, ["layer1"], str(folder), k=2, progress=False)
    (skipped,) = exemplar_metadata(exemplars)["skipped_images"]
    assert "sliver.png is 1x20000: an aspect ratio beyond 1:50" in skipped
