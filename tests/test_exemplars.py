"""Exemplar extraction against a brute-force computation that keeps every activation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from milan_hf import schema
from milan_hf.exemplar_storage import (
    export_original_layout,
    load_exemplars,
    push_exemplars_to_hub,
    save_exemplars,
)
from milan_hf.exemplars import exemplar_metadata, extract_exemplars, materialize_images
from milan_hf.vision_models import load_vision_model
from tests.tiny_models import tiny_vit_directory

SIZE = 32


class TinyNet(torch.nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):
        x = self.conv2(self.relu(self.conv1(x)))
        return self.fc(self.pool(x).flatten(1))


def write_images(folder: Path, count: int, seed: int = 0) -> Path:
    """Random coloured rectangles on noise: varied enough that units disagree."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = rng.integers(0, 60, (40, 44, 3), dtype=np.uint8)
        for _ in range(3):
            top, left = rng.integers(0, 30, 2)
            pixels[top : top + 10, left : left + 12] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(folder / f"image_{index:03d}.png")
    return folder


@pytest.fixture(scope="module")
def probe_folder(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("probe"), 30)


def brute_force(model: torch.nn.Module, layer: str, folder: Path, k: int, quantile: float):
    """Every activation of every image, kept in memory: the reference."""
    vision_model = load_vision_model(model, input_size=SIZE)
    captured = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda module, inputs, output: captured.append(output)
    )
    files = sorted(folder.glob("*.png"))
    with torch.no_grad():
        for path in files:
            model(vision_model.transform(Image.open(path).convert("RGB"))[None])
    handle.remove()
    maps = torch.cat(captured)
    if maps.dim() == 2:
        maps = maps[:, :, None, None]
    scores = maps.amax(dim=(2, 3))  # (images, units)
    ids, top_scores = [], []
    for unit in range(maps.shape[1]):
        order = sorted(range(len(files)), key=lambda i: (-scores[i, unit].item(), i))[:k]
        ids.append(order)
        top_scores.append([scores[i, unit].item() for i in order])
    flat = maps.transpose(0, 1).reshape(maps.shape[1], -1)
    thresholds = torch.quantile(flat, quantile, dim=1)
    return maps, ids, top_scores, thresholds


@pytest.mark.parametrize("layer", ["conv1", "conv2", "fc"])
def test_matches_brute_force(probe_folder, layer):
    model = TinyNet()
    k, quantile = 5, 0.9
    exemplars = extract_exemplars(
        model,
        [layer],
        str(probe_folder),
        k=k,
        quantile=quantile,
        input_size=SIZE,
        batch_size=7,
        progress=False,
    )
    maps, ids, scores, thresholds = brute_force(model, layer, probe_folder, k, quantile)
    assert len(exemplars) == maps.shape[1]
    assert exemplars.features[schema.MASKS].feature.shape == (SIZE, SIZE)
    for row in exemplars:
        unit = row[schema.UNIT]
        assert row[schema.LAYER] == layer
        assert row[schema.IDS] == ids[unit]
        np.testing.assert_allclose(row[schema.ACTIVATIONS], scores[unit], rtol=1e-5, atol=1e-6)
        # The sketch's threshold is within one histogram bin (0.78% relative) plus the gap
        # between neighbouring order statistics of the exact quantile.
        exact = thresholds[unit].item()
        assert abs(row[schema.THRESHOLD] - exact) <= 0.02 * abs(exact) + 1e-3
        # Masks: the exemplars' maps, upsampled bilinearly with align_corners=True.
        expected = (
            F.interpolate(
                maps[ids[unit], unit][:, None],
                size=(SIZE, SIZE),
                mode="bilinear",
                align_corners=True,
            )[:, 0]
            > row[schema.THRESHOLD]
        )
        np.testing.assert_array_equal(np.asarray(row[schema.MASKS], dtype=bool), expected.numpy())


def test_several_layers_in_one_pass_match_single_layer_runs(probe_folder):
    both = extract_exemplars(
        TinyNet(), "conv1,fc", str(probe_folder), k=3, input_size=SIZE, progress=False
    )
    alone = extract_exemplars(
        TinyNet(), ["fc"], str(probe_folder), k=3, input_size=SIZE, progress=False
    )
    fc_rows = both.filter(lambda layer: layer == "fc", input_columns=["layer"])
    assert fc_rows[schema.IDS] == alone[schema.IDS]
    assert exemplar_metadata(both)["layers"] == ["conv1", "fc"]


def test_timm_vit_drops_prefix_tokens_from_the_front(probe_folder):
    import timm

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=SIZE, reg_tokens=4, num_classes=0, pretrained=False
    )
    assert vit.num_prefix_tokens == 5  # CLS + 4 registers; 9 tokens total would look square
    exemplars = extract_exemplars(
        vit, ["blocks.0.mlp.fc1"], str(probe_folder), k=2, input_size=SIZE, progress=False
    )
    assert len(exemplars) == 768
    captured = []
    vit.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: captured.append(o))
    vision_model = load_vision_model(vit, input_size=SIZE)
    best = exemplars[0][schema.IDS][0]
    image = Image.open(sorted(probe_folder.glob("*.png"))[best]).convert("RGB")
    with torch.no_grad():
        vit(vision_model.transform(image)[None])
    patch_tokens = captured[0][0, 5:, 0]  # unit 0 over the 2x2 patch grid
    assert exemplars[0][schema.ACTIVATIONS][0] == pytest.approx(patch_tokens.max().item(), rel=1e-5)


def test_transformers_model_from_local_directory(tmp_path, probe_folder):
    tiny_vit_directory(tmp_path / "vit", SIZE)
    exemplars = extract_exemplars(
        str(tmp_path / "vit"), ["layers.0.mlp.fc1"], str(probe_folder), k=3, progress=False
    )
    assert len(exemplars) == 24
    assert np.asarray(exemplars[0][schema.MASKS]).shape == (3, SIZE, SIZE)
    assert exemplar_metadata(exemplars)["geometry"]["type"] == "image_processor"


def test_unknown_layer_lists_close_names(probe_folder):
    with pytest.raises(ValueError, match=r"unknown layer 'conv3'.*conv1"):
        extract_exemplars(TinyNet(), ["conv3"], str(probe_folder), input_size=SIZE)


class FlatNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3)
        self.flat = torch.nn.Flatten(0)  # output (N,): no unit axis

    def forward(self, x):
        return self.flat(self.conv1(x))


def test_unsupported_output_shape_is_named(probe_folder):
    with pytest.raises(ValueError, match=r"'flat' outputs shape \(\d+,\)"):
        extract_exemplars(FlatNet(), ["flat"], str(probe_folder), input_size=SIZE, progress=False)


def test_bad_probe_sets(tmp_path, probe_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        extract_exemplars(TinyNet(), ["conv1"], str(tmp_path / "empty"), input_size=SIZE)
    with pytest.raises(ValueError, match=r"k=31 is larger than the number of probe images \(30\)"):
        extract_exemplars(TinyNet(), ["conv1"], str(probe_folder), k=31, input_size=SIZE)
    with pytest.raises(FileNotFoundError, match="probe images not found"):
        extract_exemplars(TinyNet(), ["conv1"], str(tmp_path / "missing"), input_size=SIZE)


def test_unreadable_images_are_skipped_and_named(tmp_path):
    folder = write_images(tmp_path / "probe", 8)
    (folder / "image_003.png").write_bytes(b"not a png")
    exemplars = extract_exemplars(
        TinyNet(), ["conv2"], str(folder), k=3, input_size=SIZE, progress=False
    )
    skipped = exemplar_metadata(exemplars)["skipped_images"]
    assert len(skipped) == 1 and "image_003.png" in skipped[0]
    assert all(3 not in ids for ids in exemplars[schema.IDS])


def test_dead_units_are_flagged_not_crashed_on(probe_folder):
    model = TinyNet()
    with torch.no_grad():
        model.conv1.weight[2].zero_()
        model.conv1.bias[2] = 0.0  # unit 2: zero everywhere
        model.conv1.bias[5] = float("nan")  # unit 5: NaN everywhere
    exemplars = extract_exemplars(
        model, ["conv1"], str(probe_folder), k=3, input_size=SIZE, progress=False
    )
    dead = dict(zip(exemplars[schema.UNIT], exemplars[schema.DEAD]))
    assert dead[2] and dead[5] and not dead[0]
    assert not np.asarray(exemplars[2][schema.MASKS]).any()


def test_save_load_materialize_and_export(tmp_path, probe_folder):
    exemplars = extract_exemplars(
        TinyNet(), ["conv2", "fc"], str(probe_folder), k=4, input_size=SIZE, progress=False
    )
    save_exemplars(exemplars, tmp_path / "out")
    loaded = load_exemplars(tmp_path / "out")
    assert loaded[schema.IDS] == exemplars[schema.IDS]
    assert exemplar_metadata(loaded)["probe_source"]["path"] == str(probe_folder.resolve())
    with pytest.raises(FileExistsError):
        save_exemplars(exemplars, tmp_path / "out")

    # Images come back from the recorded probe source, cropped as the model saw them.
    materialized = materialize_images(loaded.select(range(2)))
    images = materialized[0][schema.IMAGES]
    assert len(images) == 4 and images[0].size == (SIZE, SIZE)

    export_original_layout(exemplars, tmp_path / "original", with_images=True)
    masks = np.load(tmp_path / "original" / "conv2" / "masks.npy")
    assert masks.shape == (6, 4, 1, SIZE, SIZE) and masks.dtype == np.uint8
    assert np.load(tmp_path / "original" / "fc" / "images.npy").shape == (4, 4, 3, SIZE, SIZE)
    ids = np.loadtxt(tmp_path / "original" / "conv2" / "ids.csv", delimiter=",", dtype=int)
    assert (
        ids.tolist()
        == exemplars.filter(lambda x: x == "conv2", input_columns=["layer"])[schema.IDS]
    )


def test_interrupted_save_leaves_nothing_loadable(tmp_path, probe_folder, monkeypatch):
    exemplars = extract_exemplars(
        TinyNet(), ["fc"], str(probe_folder), k=2, input_size=SIZE, progress=False
    )
    import datasets

    real_save = datasets.Dataset.save_to_disk

    def save_then_die(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)
        raise KeyboardInterrupt  # killed after the data, before the metadata

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_exemplars(exemplars, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="not a complete exemplar set"):
        load_exemplars(tmp_path / "out")
    save_exemplars(exemplars, tmp_path / "out")  # rerunning finishes the job
    assert len(load_exemplars(tmp_path / "out")) == 4
    assert not list(tmp_path.glob(".out.partial-*"))


def test_push_to_hub_sends_parquet_and_card(tmp_path, probe_folder, fake_hub):
    exemplars = extract_exemplars(
        TinyNet(), ["fc"], str(probe_folder), k=2, input_size=SIZE, progress=False
    )
    push_exemplars_to_hub(exemplars, "someone/tiny-exemplars")
    (create_repo,) = fake_hub.calls_to("create_repo")
    assert create_repo["repo_type"] == "dataset"
    (upload,) = fake_hub.calls_to("upload_folder")
    assert (upload["repo_id"], upload["repo_type"]) == ("someone/tiny-exemplars", "dataset")
    sent = fake_hub.folder("someone/tiny-exemplars")
    assert sorted(str(p.relative_to(sent)) for p in sent.rglob("*") if p.is_file()) == [
        "README.md",
        "data/train-00000-of-00001.parquet",
    ]
    rows = sum(
        len(__import__("pyarrow.parquet").parquet.read_table(p)) for p in sent.rglob("*.parquet")
    )
    assert rows == 4
    card = (sent / "README.md").read_text()
    assert "Exemplars of TinyNet" in card and "@inproceedings{hernandez2022natural" in card


def test_cli_end_to_end_with_checkpoint(tmp_path, probe_folder):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    weights = {k: v.contiguous() for k, v in timm.create_model("resnet10t").state_dict().items()}
    save_file(weights, tmp_path / "weights.safetensors")
    command = [
        sys.executable,
        "-m",
        "milan_hf.cli",
        "exemplars",
        "--model",
        "resnet10t",
        "--checkpoint",
        str(tmp_path / "weights.safetensors"),
        "--layers",
        "layer1,layer4",
        "--images",
        str(probe_folder),
        "--output",
        str(tmp_path / "out"),
        "--k",
        "3",
        "--batch-size",
        "16",
        "--export-original",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "wrote 576 units of 2 layer(s)" in result.stdout
    assert "pass 1/2" in result.stderr and "pass 2/2" in result.stderr  # progress bars
    metadata = json.loads((tmp_path / "out" / "milan_exemplars.json").read_text())
    data_config = timm.data.resolve_data_config({}, model=timm.create_model("resnet10t"))
    assert metadata["geometry"]["crop"] == list(data_config["input_size"][1:])  # timm's own
    assert (tmp_path / "out" / "original" / "layer4" / "masks.npy").is_file()

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr

    bad = subprocess.run(
        command[:-1] + ["--layers", "layer9", "--overwrite"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown layer 'layer9'" in bad.stderr


def test_custom_transform_without_resize_sizes_masks_from_the_images(probe_folder):
    from torchvision import transforms as T

    to_tensor = T.Compose([T.CenterCrop(36), T.ToTensor()])  # no resize: masks must be 36 px
    exemplars = extract_exemplars(
        TinyNet(), ["conv2"], str(probe_folder), k=2, transform=to_tensor, progress=False
    )
    assert np.asarray(exemplars[0][schema.MASKS]).shape == (2, 36, 36)
    assert exemplar_metadata(exemplars)["geometry"] == {"type": "resize", "size": [36, 36]}
