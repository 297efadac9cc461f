"""The annotated probe-world corpus: original MILANNOTATIONS layout, loader, probe models."""

import csv
import json

import numpy as np
import pytest
import torch

from milan_hf.milannotations import load_milannotations
from milan_hf.probe_world.concepts import load_stamps
from milan_hf.probe_world.corpus import main as corpus_cli
from milan_hf.probe_world.probe_models import ProbeModelSpec, load_probe_model
from milan_hf.probe_world.scenes import generate_scene

SIZE, K, IMAGES, SEED = 32, 5, 40, 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    output = root / "probe_corpus"
    argv = ["--output", str(output), "--tiny", "--num-images", str(IMAGES), "--size", str(SIZE)]
    argv += ["--k", str(K), "--seed", str(SEED), "--model-cache", str(root / "models"), "--quiet"]
    assert corpus_cli(argv) == 0
    return output


def test_corpus_layout_matches_the_original(corpus):
    info = json.loads((corpus / "corpus.json").read_text())
    assert [n["name"] for n in info["networks"]] == ["planted", "shape-cnn", "shape-vit"]
    assert info["held_out"] == ["shape-vit/probeworld"]
    total = 0
    for network in info["networks"]:
        folder = corpus / network["set"]
        with open(folder / "annotations.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        per_unit: dict[tuple[str, int], list[str]] = {}
        for row in rows:
            per_unit.setdefault((row["layer"], int(row["unit"])), []).append(row["summary"])
        assert all(len(descriptions) == 3 for descriptions in per_unit.values())
        for layer, units in network["layers"].items():
            masks = np.load(folder / layer / "masks.npy")
            images = np.load(folder / layer / "images.npy")
            ids = np.loadtxt(folder / layer / "ids.csv", delimiter=",", dtype=np.int64, ndmin=2)
            activations = np.loadtxt(folder / layer / "activations.csv", delimiter=",", ndmin=2)
            assert masks.dtype == np.uint8 and masks.shape == (units, K, 1, SIZE, SIZE)
            assert set(np.unique(masks)) <= {0, 1}
            assert images.dtype == np.uint8 and images.shape == (units, K, 3, SIZE, SIZE)
            assert ids.shape == activations.shape == (units, K)
            assert ((ids >= 0) & (ids < IMAGES)).all()
            assert (np.diff(activations, axis=1) <= 1e-6).all()  # best exemplar first
            assert {(layer, u) for u in range(units)} <= set(per_unit)
            # images.npy holds the probe scenes that ids.csv points at.
            for unit in (0, units - 1):
                scene = generate_scene(SEED, int(ids[unit, 0]), SIZE, load_stamps())
                assert np.array_equal(images[unit, 0].transpose(1, 2, 0), scene.image)
        total += sum(network["layers"].values())
    assert info["units"] == total and info["descriptions"] == 3 * total


def test_corpus_loads_with_the_milannotations_reader(corpus, tmp_path):
    dataset = load_milannotations(
        "all", data_dir=corpus, cache_dir=tmp_path, held_out=["shape-vit"]
    )
    info = json.loads((corpus / "corpus.json").read_text())
    sizes = {n["name"]: n["units"] for n in info["networks"]}
    assert len(dataset["test"]) == sizes["shape-vit"]
    assert len(dataset["train"]) == sizes["planted"] + sizes["shape-cnn"]
    row = dataset["train"][0]
    assert len(row["descriptions"]) == 3 and len(row["images"]) == K
    assert np.asarray(row["masks"][0]).shape == (SIZE, SIZE)


def test_existing_output_needs_overwrite(corpus, capsys):
    assert corpus_cli(["--output", str(corpus), "--tiny"]) == 2
    assert "exists" in capsys.readouterr().err


def test_probe_models_are_deterministic_and_cached(tmp_path):
    spec = ProbeModelSpec(
        "tiny", "cnn", "colour", ("conv2",), (4, 8), image_size=24, train_images=24, epochs=1
    )
    first, metrics = load_probe_model(spec, cache_dir=tmp_path / "a", progress=False)
    again, _ = load_probe_model(spec, cache_dir=tmp_path / "b", progress=False)
    cached, cached_metrics = load_probe_model(spec, cache_dir=tmp_path / "a", progress=False)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
        assert torch.equal(tensor, cached.state_dict()[name]), name
    assert cached_metrics["classes"] == metrics["classes"] and len(metrics["classes"]) == 11
    assert sorted(p.suffix for p in (tmp_path / "a").iterdir()) == [".json", ".safetensors"]
    with pytest.raises(FileNotFoundError, match="no cached weights"):
        load_probe_model(spec, cache_dir=tmp_path / "c", train_if_missing=False)
