"""Editing: remove a spurious feature by ablating the units whose descriptions name it.

MILAN's spurious-text experiment, reproduced on the probe world. A shape classifier is trained
on scenes where half the training images carry their class name ("circle", "star", ...) written
in a corner; on an adversarial test set, where every image carries a random class name, it is
misled by the text. ``milan_hf.describe`` describes its units, those whose description mentions
text are selected (``milan_hf.audit``), ordered by the validation accuracy with each one ablated
alone (least harmful first), and ablated cumulatively; the adversarial, validation and clean
(no text) accuracies are measured after each.

The classifier (``TextClassifierConfig``) trains in a few minutes on 2 CPU cores, seeded, and is
cached as safetensors under ``~/.cache/milan_hf/probe_models`` like the probe models
(``$MILAN_HF_CACHE`` overrides the root). ``text_probability=0`` gives the control classifier of
the audit: same task, no text in its scenes. The number of text units to ablate is chosen on a
separate adversarial validation split, never on the test.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import schema
from .ablation import (
    AccuracyEvaluator,
    Unit,
    ablation_curve,
    ablation_steps,
    single_unit_accuracies,
)
from .probe_world.probe_models import (
    ProbeCNN,
    normalise,
    optimisation_step,
    probe_model_cache_dir,
    task_classes,
    task_scene,
)
from .probe_world.scenes import world_version

#: Bump when the way the experiment draws its images changes: cached classifiers are keyed by it.
DATA_VERSION = 1
CLASSIFIER_FILE = "model.safetensors"
CLASSIFIER_INFO = "probe_model.json"
#: The split that chooses how many text units to ablate.
SELECTION_SPLIT = "adversarial_validation"
CORNERS = ("top left", "top right", "bottom left", "bottom right")


def text_query_words() -> list[str]:
    """The words by which probe-world descriptions say "text" (the grammar's text nouns)."""
    from .probe_world import concepts as C
    from .probe_world import phrasing as P

    phrases = C.all_concepts()["text"].nouns + P.EXTRA_NOUNS["text"]
    generic = {"printed", "typed", "alphabet"}  # modifiers that never occur without a text noun
    return sorted({word for phrase in phrases for word in phrase.split()} - generic)


@dataclass(frozen=True)
class TextClassifierConfig:
    """The spurious-text shape classifier: data, architecture and training budget."""

    text_probability: float = 0.5
    image_size: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 128, 192)
    train_images: int = 2400
    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 3e-3
    font_size: int = 12
    seed: int = 0

    def key(self) -> str:
        payload = json.dumps(
            {**asdict(self), "world": world_version(), "data": DATA_VERSION}, sort_keys=True
        )
        kind = "spurious-text" if self.text_probability > 0 else "no-text"
        return f"{kind}-shape-cnn-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"

    @property
    def classes(self) -> list[str]:
        return task_classes("shape")


def write_label(image: np.ndarray, word: str, corner: str, font_size: int) -> np.ndarray:
    """``image`` with ``word`` written in a corner: white glyphs with a black outline, legible
    on any background."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font, stroke_width=1)
    margin = 1
    x = margin - left if "left" in corner else canvas.width - margin - right
    y = margin - top if "top" in corner else canvas.height - margin - bottom
    draw.text((x, y), word, fill=(255, 255, 255), font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(canvas)


def draw_split(config: TextClassifierConfig, split: str, num_images: int) -> dict[str, list]:
    """Images, labels and written words of one split.

    ``train``/``validation``: class-name text on a ``text_probability`` share of the images;
    ``adversarial``: a random class name on every image; ``clean``: no text (same scenes as
    ``adversarial``, so the two differ only by the written word); ``adversarial_validation``:
    like ``adversarial`` on other scenes, to choose how many units to ablate without the test.
    """
    seeds = {"train": 0, "validation": 1000, "clean": 2000, "adversarial": 2000}
    seeds["adversarial_validation"] = 3000
    random_text = split.startswith("adversarial")
    if split not in seeds:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(seeds)}")
    classes = config.classes
    seed = config.seed + seeds[split]
    rng = np.random.default_rng([config.seed, seeds[split], 1 if random_text else 0])
    images, labels, words = [], [], []
    for index in range(num_images):
        label = index % len(classes)
        pixels = task_scene("shape", label, seed, index, config.image_size, (), classes).image
        corner = CORNERS[int(rng.integers(len(CORNERS)))]
        word = ""
        if random_text:
            word = classes[int(rng.integers(len(classes)))]
        elif split != "clean" and rng.random() < config.text_probability:
            word = classes[label]
        if word:
            pixels = write_label(pixels, word, corner, config.font_size)
        images.append(pixels)
        labels.append(label)
        words.append(word)
    return {"image": images, "label": labels, "text": words}


def split_dataset(config: TextClassifierConfig, split: str, num_images: int) -> datasets.Dataset:
    """One split as a ``datasets.Dataset`` (columns image, label, text)."""
    rows = draw_split(config, split, num_images)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=config.classes),
            "text": datasets.Value("string"),
        }
    )
    rows["image"] = [Image.fromarray(pixels) for pixels in rows["image"]]
    table = datasets.Dataset.from_dict(rows, features=features)
    # A split is a pure function of the config: a fixed fingerprint lets a rerun of ``describe``
    # on it resume instead of starting over.
    fingerprint = hashlib.sha256(f"{config.key()}/{split}/{num_images}".encode()).hexdigest()[:16]
    return datasets.Dataset(table.data, info=table.info, fingerprint=fingerprint)


def train_text_classifier(
    config: TextClassifierConfig, progress: bool = True
) -> tuple[ProbeCNN, dict]:
    """Train the classifier of ``config`` from scratch, deterministically by its seed."""
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    rows = draw_split(config, "train", config.train_images)
    images = torch.from_numpy(np.stack(rows["image"])).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(rows["label"])
    model = ProbeCNN(config.channels, len(config.classes))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    steps = config.epochs * -(-len(images) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, config.learning_rate, total_steps=steps
    )
    order_generator = torch.Generator().manual_seed(config.seed)
    bar = tqdm(total=steps, desc="training the text classifier", disable=not progress)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=order_generator)
        for start in range(0, len(images), config.batch_size):
            batch = order[start : start + config.batch_size]
            # No flips: they would mirror the written words.
            loss = F.cross_entropy(model(normalise(images[batch])), labels[batch])
            optimisation_step(loss, optimiser, schedule, bar)
    bar.close()
    metrics = {"classes": config.classes, "train_seconds": round(time.perf_counter() - started, 1)}
    return model.eval(), metrics


def save_classifier(
    model: ProbeCNN, config: TextClassifierConfig, directory: str | Path, metrics: dict
) -> Path:
    """Write ``model.safetensors`` and ``probe_model.json`` (what :func:`load_classifier` reads)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
    save_file({name: t.contiguous() for name, t in model.state_dict().items()}, str(temporary))
    temporary.replace(directory / CLASSIFIER_FILE)
    info = {
        "architecture": "cnn",
        "channels": list(config.channels),
        "image_size": config.image_size,
        "config": asdict(config),
        **metrics,
    }
    (directory / CLASSIFIER_INFO).write_text(json.dumps(info, indent=2))
    return directory


def is_classifier_dir(path: str | Path) -> bool:
    return (Path(path) / CLASSIFIER_FILE).is_file() and (Path(path) / CLASSIFIER_INFO).is_file()


def load_classifier(directory: str | Path) -> tuple[ProbeCNN, dict]:
    """A classifier saved by :func:`save_classifier`: the model (eval mode) and its info."""
    directory = Path(directory)
    if not is_classifier_dir(directory):
        raise FileNotFoundError(f"{directory} holds no {CLASSIFIER_FILE} + {CLASSIFIER_INFO}")
    info = json.loads((directory / CLASSIFIER_INFO).read_text())
    if info.get("architecture") != "cnn":
        raise ValueError(f"unknown architecture {info.get('architecture')!r} in {directory}")
    model = ProbeCNN(info["channels"], len(info["classes"]))
    model.load_state_dict(load_file(directory / CLASSIFIER_FILE))
    return model.eval(), info


def load_text_classifier(
    config: TextClassifierConfig,
    cache_dir: str | Path | None = None,
    train_if_missing: bool = True,
    progress: bool = True,
) -> tuple[ProbeCNN, dict]:
    """The trained classifier of ``config``: from the cache, else trained now and cached."""
    directory = Path(cache_dir or probe_model_cache_dir()) / config.key()
    if is_classifier_dir(directory):
        return load_classifier(directory)
    if not train_if_missing:
        raise FileNotFoundError(f"no cached text classifier at {directory}")
    model, metrics = train_text_classifier(config, progress=progress)
    save_classifier(model, config, directory, metrics)
    return load_classifier(directory)


@torch.inference_mode()
def unit_peaks(model: torch.nn.Module, layer: str, images: Sequence[np.ndarray]) -> torch.Tensor:
    """(images, units): each unit's largest activation over the image."""
    module = dict(model.named_modules())[layer]
    captured = []
    handle = module.register_forward_hook(
        lambda m, i, output: captured.append(output.amax(dim=(2, 3)))
    )
    try:
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        for start in range(0, len(pixels), 128):
            model(normalise(pixels[start : start + 128]))
    finally:
        handle.remove()
    return torch.cat(captured)


def text_responsive_units(
    model: torch.nn.Module,
    config: TextClassifierConfig,
    layers: Sequence[str],
    num_images: int = 256,
    min_effect: float = 1.0,
) -> dict[str, list[int]]:
    """The units that truly respond to text, from paired scenes with and without a written
    word (the adversarial and clean splits): a unit responds when its peak activation rises
    with the word by at least ``min_effect`` standard deviations of the paired differences
    (Cohen's d of the pairs), over all pairs or over the pairs of one written word (a unit may
    read one class name only)."""
    adversarial = draw_split(config, "adversarial", num_images)
    without_text = draw_split(config, "clean", num_images)["image"]
    written = np.asarray(adversarial["text"])
    groups = [np.ones(len(written), dtype=bool)]
    groups += [written == word for word in config.classes if (written == word).sum() >= 8]
    responsive = {}
    for layer in layers:
        rise = unit_peaks(model, layer, adversarial["image"]) - unit_peaks(
            model, layer, without_text
        )
        effects = [rise[torch.from_numpy(group)] for group in groups]
        effect = torch.stack([r.mean(0) / r.std(0).clamp(min=1e-6) for r in effects]).amax(0)
        responsive[layer] = torch.nonzero(effect >= min_effect).flatten().tolist()
    return responsive


@dataclass
class EditResult:
    """The spurious-text experiment's numbers."""

    text_units: list[Unit]  # in ablation order (least harmful to validation accuracy first)
    descriptions: dict[str, str]  # "layer:unit" -> description
    single_unit_validation: list[float]
    curves: dict[str, dict[str, list]]  # split -> {"num_ablated": [...], "accuracy": [...]}
    responsive: dict[str, list[int]]  # layer -> units that truly respond to text
    config: dict[str, Any]

    def before(self, split: str) -> float:
        return self.curves[split]["accuracy"][0]

    def after(self, split: str) -> float:
        return self.curves[split]["accuracy"][-1]

    def chosen(self) -> int:
        """How many text units to ablate: the measured count with the best accuracy on the
        adversarial validation split (the fewest on ties), never the test's own best."""
        curve = self.curves.get(SELECTION_SPLIT) or self.curves["validation"]
        best = max(curve["accuracy"])
        return curve["num_ablated"][curve["accuracy"].index(best)]

    def at(self, split: str, count: int) -> float:
        curve = self.curves[split]
        return curve["accuracy"][curve["num_ablated"].index(count)]

    def truly_textual(self) -> int:
        return sum(unit in self.responsive.get(layer, []) for layer, unit in self.text_units)

    def table(self) -> list[dict[str, Any]]:
        """Per split: accuracy before, at the chosen count, and with every text unit ablated."""
        chosen = self.chosen()
        return [
            {
                "split": split,
                "before": self.before(split),
                "chosen": self.at(split, chosen),
                "change": self.at(split, chosen) - self.before(split),
                "all": self.after(split),
            }
            for split in self.curves
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "text_units": [list(unit) for unit in self.text_units],
            "num_text_units": len(self.text_units),
            "chosen": self.chosen(),
            "truly_textual": self.truly_textual(),
            "truly_textual_chosen": sum(
                unit in self.responsive.get(layer, [])
                for layer, unit in self.text_units[: self.chosen()]
            ),
            "descriptions": self.descriptions,
            "single_unit_validation": self.single_unit_validation,
            "curves": self.curves,
            "table": self.table(),
            "responsive_per_layer": {layer: len(units) for layer, units in self.responsive.items()},
            "config": self.config,
        }


def ablate_text_units(
    model: torch.nn.Module,
    descriptions: datasets.Dataset,
    splits: dict[str, datasets.Dataset],
    *,
    transform: Any,
    query: str = "text",
    words: Sequence[str] | None = None,
    threshold: float | None = None,
    num_points: int | None = 16,
    every_up_to: int = 20,
    progress: bool = True,
) -> tuple[list[Unit], dict[str, str], list[float], dict[str, dict[str, list]]]:
    """Select the units described as ``query``, order them by validation accuracy when ablated
    alone (highest first), ablate them cumulatively and measure every split of ``splits``
    (which must include ``validation``) after each of the first ``every_up_to`` units and at
    ``num_points`` counts spread over all of them (``None``: after every unit). Works for any
    classifier and labelled datasets."""
    from .audit import match_descriptions

    if "validation" not in splits:
        raise ValueError(f"splits must include 'validation', got {sorted(splits)}")
    words = text_query_words() if words is None else words
    texts = [str(text) for text in descriptions[schema.DESCRIPTION]]
    matches = match_descriptions(texts, query, words=words, threshold=threshold)
    selected = [
        (str(layer), int(unit))
        for layer, unit, match in zip(descriptions["layer"], descriptions["unit"], matches)
        if match.matched
    ]
    text_of = {
        f"{layer}:{unit}": text
        for layer, unit, text, match in zip(
            descriptions["layer"], descriptions["unit"], texts, matches
        )
        if match.matched
    }
    evaluators = {
        split: AccuracyEvaluator(model, dataset, transform=transform, progress=progress)
        for split, dataset in splits.items()
    }
    alone = single_unit_accuracies(evaluators["validation"], selected)
    ranking = sorted(range(len(selected)), key=lambda i: (-alone[i], i))
    order = [selected[i] for i in ranking]
    steps = ablation_steps(len(order), num_points, every_up_to)
    curves = {
        split: ablation_curve(evaluator, order, steps=steps, desc=f"ablating text units ({split})")
        for split, evaluator in evaluators.items()
    }
    serialised = {
        s: {"num_ablated": c.num_ablated, "accuracy": c.accuracy} for s, c in curves.items()
    }
    return order, text_of, [alone[i] for i in ranking], serialised


def with_config(config: TextClassifierConfig, **changes: Any) -> TextClassifierConfig:
    """A copy of ``config`` with some fields changed (e.g. a tiny budget for tests)."""
    return replace(config, **changes)


def plot_edit_curves(curves: dict[str, dict[str, list]], path: str | Path) -> Path:
    """Accuracy of each split against the number of text units ablated (matplotlib PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for split, curve in curves.items():
        axis.plot(curve["num_ablated"], curve["accuracy"], marker="o", markersize=3, label=split)
    axis.set_xlabel("text units ablated (least harmful to validation first)")
    axis.set_ylabel("accuracy")
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _describe_classifier(model, config, probe, output_dir: Path, layers, describe_options) -> Any:
    from .describer import describe
    from .probe_world.probe_models import probe_transform

    return describe(
        model,
        list(layers),
        probe,
        transform=probe_transform(config.image_size),
        output_dir=output_dir,
        **describe_options,
    )


def run_spurious_text_experiment(
    output_dir: str | Path,
    config: TextClassifierConfig | None = None,
    *,
    layers: Sequence[str] = ("conv4", "conv5"),
    split_images: int = 400,
    query: str = "text",
    words: Sequence[str] | None = None,
    threshold: float | None = None,
    control: bool = True,
    progress: bool = True,
    **describe_options: Any,
) -> dict[str, Any]:
    """The whole experiment into ``output_dir``: the classifier (``classifier/``), its splits
    (``data/<split>``), its descriptions (``describe/``), ``edit.json`` / ``edit.png`` /
    ``edit.html``; with ``control``, the no-text classifier described on the same images
    (``control/``) and the audit of both for ``query`` (``audit.json`` / ``audit.html``).

    ``describe_options`` go to :func:`milan_hf.describe` (``k``, ``num_beams``, ``units``, ...).
    """
    from .application_report import write_edit_page
    from .probe_world.probe_models import probe_transform

    config = config or TextClassifierConfig()
    output_dir = Path(output_dir)
    model, info = load_text_classifier(config, progress=progress)
    save_classifier(
        model,
        config,
        output_dir / "classifier",
        {k: v for k, v in info.items() if k in ("classes", "train_seconds")},
    )
    names = ("validation", SELECTION_SPLIT, "adversarial", "clean")
    splits = {split: split_dataset(config, split, split_images) for split in names}
    for split, dataset in splits.items():
        dataset.save_to_disk(str(output_dir / "data" / split))
    describe_options = {"progress": progress, "overwrite": True, **describe_options}
    descriptions = _describe_classifier(
        model, config, splits["validation"], output_dir / "describe", layers, describe_options
    )
    order, texts, alone, curves = ablate_text_units(
        model,
        descriptions,
        splits,
        transform=probe_transform(config.image_size),
        query=query,
        words=words,
        threshold=threshold,
        progress=progress,
    )
    result = EditResult(
        order,
        texts,
        alone,
        curves,
        text_responsive_units(model, config, layers),
        {**asdict(config), "layers": list(layers), "split_images": split_images},
    )
    edit = result.as_dict()
    (output_dir / "edit.json").write_text(json.dumps(edit, indent=2))
    write_edit_page(edit, plot_edit_curves(curves, output_dir / "edit.png"), output_dir)
    summary: dict[str, Any] = {"edit": edit, "classifier_info": info}
    if control:
        summary["audit"] = _control_audit(
            output_dir,
            config,
            splits["validation"],
            layers,
            describe_options,
            query=query,
            words=words,
            threshold=threshold,
            progress=progress,
        )
        summary["audit"]["responsive_per_layer"]["with-text"] = edit["responsive_per_layer"]
        (output_dir / "audit.json").write_text(json.dumps(summary["audit"], indent=2))
    return summary


def _control_audit(
    output_dir, config, probe, layers, describe_options, *, query, words, threshold, progress
):
    """Describe the no-text control classifier on the same images; audit both for ``query``."""
    from .application_report import write_audit_page
    from .audit import audit_describe_outputs
    from .describer import load_description_outputs

    control_config = replace(config, text_probability=0.0)
    control_model, _ = load_text_classifier(control_config, progress=progress)
    save_classifier(
        control_model,
        control_config,
        output_dir / "control" / "classifier",
        {"classes": config.classes},
    )
    _describe_classifier(
        control_model,
        control_config,
        probe,
        output_dir / "control" / "describe",
        layers,
        describe_options,
    )
    directories = [output_dir / "describe", output_dir / "control" / "describe"]
    names = ["with-text", "without-text"]
    result = audit_describe_outputs(
        directories,
        query,
        names=names,
        words=text_query_words() if words is None else words,
        threshold=threshold,
    )
    exemplars = {name: load_description_outputs(d)[1] for name, d in zip(names, directories)}
    write_audit_page(result, output_dir, exemplars)
    audited = result.as_dict()
    responsive = text_responsive_units(control_model, control_config, layers)
    audited["responsive_per_layer"] = {
        "without-text": {layer: len(units) for layer, units in responsive.items()}
    }
    return audited
