"""Describe the units of a vision model in natural language: exemplars → MILAN descriptions.

``describe(model, layers, images, captioner=...)`` runs the whole MILAN pipeline: for each
layer, the exemplar set (``milan_hf.exemplars``: top-k images and the masks of where each unit
fires), its images materialised as the model saw them, then the captioner's PMI decoding
(``MilanCaptionerModel.generate``: ``argmax_d log p(d|E) − λ·log p(d)``), batched across
units. It returns the descriptions as a ``datasets.Dataset`` (``schema.RUN_DESCRIPTION_COLUMNS``:
``layer``, ``unit``, ``description``, ``score`` (the PMI score), ``captioner_log_prob``
(log p(d|E)), ``prior_log_prob`` (log p(d)) and ``dead``). A dead unit (constant, NaN or inf
over the probe set) is never shown to the captioner: its description is the marker
``schema.DEAD_UNIT_DESCRIPTION`` and its scores are NaN.

With ``output_dir`` it writes the CSV, datasets and HTML report there and resumes an
interrupted run (``milan_hf.describe_output``); a rerun resumes only when the run's
fingerprints match (``milan_hf.run_fingerprint``). The embedded offline default
(``describe_default``) is in ``milan_hf.default_run``, publishing in ``milan_hf.hub``; their
names stay importable from here.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from . import schema
from .default_run import (  # noqa: F401  (re-exported: the embedded default)
    DEFAULT_IMAGE_SIZE,
    DEFAULT_LAYERS,
    DEFAULT_MODEL_NAME,
    DEFAULT_NUM_SCENES,
    DEFAULT_OUTPUT_DIR,
    DEFAULT_SCENE_SEED,
    default_model,
    default_probe_images,
    describe_default,
    photographs,
)
from .describe_output import (  # noqa: F401  (re-exported: the output layout)
    CSV_FILE,
    DESCRIPTIONS_DIR,
    EXEMPLARS_DIR,
    REPORT_FILE,
    RUN_FILE,
    STATE_DIR,
    commit_layer_descriptions,
    commit_layer_exemplars,
    layer_folder,
    load_description_outputs,
    prepare_output,
    write_descriptions_csv,
    write_outputs,
)
from .dissect import EMBEDDED_BEAM, DissectDescriber, DissectSettings
from .exemplar_storage import load_exemplars
from .exemplars import ExtractionInputs, extract_exemplars, materialize_images, prepare_extraction
from .faithfulness import (
    VERIFICATION_COLUMNS,
    VerificationSettings,
    unverified_record,
    verification_features,
    verify_layer,
)
from .hub import descriptions_card, push_descriptions_to_hub  # noqa: F401  (re-exported)
from .inference import (  # noqa: F401  (re-exported: the one inference path)
    EMBEDDED_CAPTIONER,
    describe_exemplars,
    load_captioner,
)
from .probe_images import ProbeImages
from .run_fingerprint import captioner_fingerprint, model_fingerprint, probe_fingerprint
from .staged_output import check_output_location
from .vision_models import VisionModel

logger = logging.getLogger(__name__)

# The description schema lives in milan_hf.schema; these names stay importable from here.
DESCRIPTION = schema.DESCRIPTION
SCORE = schema.SCORE
CAPTIONER_LOG_PROB = schema.CAPTIONER_LOG_PROB
PRIOR_LOG_PROB = schema.PRIOR_LOG_PROB
DESCRIPTION_COLUMNS = schema.DESCRIPTION_COLUMNS
DESCRIPTION_FEATURES = schema.DESCRIPTION_FEATURES


# ---------------------------------------------------------------------------------------------
# The run
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
    no_repeat_ngram_size: int | None = None,
    no_repeat_words: bool | None = None,
    batch_size: int = 32,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    input_size: int | tuple[int, int] | None = None,
    image_column: str | None = None,
    split: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    report: bool = True,
    report_title: str | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
    method: str = "milan",
    dissect: DissectSettings | None = None,
    verify: bool | VerificationSettings = False,
) -> datasets.Dataset:
    """Describe every unit of ``layers`` of ``model`` from its exemplars in ``images``.

    ``model``, ``layers``, ``images``, ``k``, ``quantile``, ``checkpoint``, ``pretrained``,
    ``transform``, ``input_size``, ``image_column``, ``split`` and ``seed`` (of a randomly
    initialised timm model) are as in :func:`milan_hf.exemplars.extract_exemplars`.

    Args:
        captioner: a captioner directory, Hub id or loaded ``MilanCaptionerModel``; default
            the captioner embedded in the package.
        output_dir: write the CSV, datasets and HTML report there, and resume an interrupted
            run with the same settings (:mod:`milan_hf.describe_output`). ``None``: nothing
            is written. ``overwrite`` replaces only what milan_hf wrote there.
        units: describe only some units of each layer: their indices, or an int ``n`` for
            units ``0..n-1`` (exemplars are still found for every unit, cheaply).
        pmi_weight, pmi_strategy, num_beams, no_repeat_ngram_size, no_repeat_words: decoding
            (λ of ``log p(d|E) − λ·log p(d)``, "rerank"/"token", beam width, blocked n-gram
            size, repeated-word blocking); default: the captioner's ``generation_config``.
        batch_size: images per forward pass, and units per generate call.
        report, report_title, device: write ``index.html`` (with ``output_dir``), its title;
            where the model and captioner run (default: CUDA when available).
        method: ``"milan"`` or ``"dissect"`` (Describe-and-Dissect with the models of
            ``dissect``, :mod:`milan_hf.dissect`); ``described_by`` records which.
        verify: check each description against its unit (True or a VerificationSettings).

    Returns one row per unit: ``schema.RUN_DESCRIPTION_COLUMNS``."""
    generation = _generation_settings(pmi_weight, pmi_strategy, num_beams,
                                      no_repeat_ngram_size, no_repeat_words)  # fmt: skip
    _check_units(units)
    dissect = _dissect_settings(method, dissect, verify)
    if output_dir is not None:  # never into the working directory or the inputs
        output_dir = check_output_location(output_dir, [images, model, checkpoint, captioner])
    inputs = prepare_extraction(
        model, layers, images, k=k, quantile=quantile, batch_size=batch_size,
        model_options=dict(pretrained=pretrained, checkpoint=checkpoint, transform=transform,
                           input_size=input_size, seed=seed),
        probe_options=dict(split=split, image_column=image_column),
    )  # fmt: skip
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    captioner_model, processor = _milan_captioner(captioner, dissect, device)
    run = _LayerRun(inputs, units, k, quantile, batch_size, generation, captioner_model, processor,
                    device, progress, verification=_verification_settings(verify))  # fmt: skip
    _choose_describer(run, dissect, captioner)  # the one dispatch: MILAN or Describe-and-Dissect
    if output_dir is None:
        found = run.find_exemplars(inputs.layers)
        return datasets.concatenate_datasets([run.describe_layer(found[n]) for n in inputs.layers])
    settings = _run_settings(model, checkpoint, captioner, run)
    title = (report_title or _default_title(run)) if report else None
    return _describe_resumably(output_dir, run, settings, overwrite=overwrite, report_title=title)


def _dissect_settings(method: str, dissect: DissectSettings | None, verify: Any):
    """The checked Describe-and-Dissect settings of ``method`` (None for MILAN)."""
    if method not in ("milan", "dissect"):
        raise ValueError(f"method must be 'milan' or 'dissect', got {method!r}")
    if method == "milan":
        return None
    if getattr(verify, "rerank_top", 0):
        raise ValueError(
            "verification rerank re-chooses among the MILAN beam; with method='dissect' the "
            "candidates are already chosen by their images (drop --verify-rerank)"
        )
    return (dissect or DissectSettings()).check()


def _milan_captioner(captioner: Any, dissect: DissectSettings | None, device: torch.device):
    """The MILAN captioner and processor, unless Describe-and-Dissect captions with its own."""
    if dissect is not None and dissect.image_captioner != EMBEDDED_BEAM:
        return None, None
    return load_captioner(captioner, device=device)


def _default_title(run: _LayerRun) -> str:
    name = run.inputs.model.name
    if run.dissect is None:
        return f"MILAN descriptions of {name}"
    return f"Describe-and-Dissect descriptions of {name}, by {run.described_by}"


def _run_settings(model: Any, checkpoint: Any, captioner: Any, run: _LayerRun) -> dict:
    """Everything a run's descriptions depend on: a resumed run must match it exactly."""
    units = run.units
    return {
        "model": model_fingerprint(model, run.inputs.model, checkpoint),
        "images": probe_fingerprint(run.inputs.probe),
        "captioner": captioner_fingerprint(captioner, EMBEDDED_CAPTIONER),
        "units": units if units is None or isinstance(units, int) else sorted(set(units)),
        "k": run.k,
        "quantile": run.quantile,
        "input_size": list(run.inputs.model.input_size),
        **run.generation,
        # Only dissect runs add keys: MILAN outputs written before them still resume.
        **(
            {"method": "dissect", "dissect": run.dissect.settings.fingerprint()}
            if run.dissect is not None
            else {}
        ),
        **({"verification": run.verification.fingerprint()} if run.verification else {}),
    }


def _choose_describer(run: _LayerRun, settings: DissectSettings | None, captioner: Any) -> None:
    """Make ``run`` describe with MILAN (``settings`` None) or Describe-and-Dissect (the
    decoding settings then go to the embedded beam)."""
    run.described_by = f"milan (captioner: {_captioner_label(captioner)})"
    if settings is None:
        return
    given = {name: value for name, value in run.generation.items() if value is not None}
    settings = replace(settings, generation=given)
    milan = (run.captioner, run.processor) if run.captioner is not None else None
    run.dissect = DissectDescriber(
        settings, run.inputs.model, run.device, milan, run.batch_size, run.progress
    )
    run.described_by = settings.described_by()


def _captioner_label(captioner: Any) -> str:
    if captioner is None:
        return "embedded"
    return str(getattr(captioner, "name_or_path", "") or captioner)


def _verification_settings(verify: bool | VerificationSettings) -> VerificationSettings | None:
    if isinstance(verify, VerificationSettings):
        return verify
    if not isinstance(verify, bool):
        raise ValueError(f"verify must be True, False or a VerificationSettings, got {verify!r}")
    return VerificationSettings() if verify else None


@dataclass
class _LayerRun:
    """What finding and describing a layer's units needs, shared by the layers of a run."""

    inputs: ExtractionInputs
    units: int | Sequence[int] | None
    k: int
    quantile: float
    batch_size: int
    generation: dict[str, Any]
    captioner: Any
    processor: Any
    device: torch.device
    progress: bool
    dissect: DissectDescriber | None = None
    described_by: str = "milan"
    verification: VerificationSettings | None = None

    def find_exemplars(self, pending: list[str]) -> dict[str, datasets.Dataset]:
        """The exemplar sets of ``pending`` layers (one pass over the probe set serves them
        all), restricted to the chosen units, images materialised."""
        found = extract_exemplars(
            self.inputs.model,
            pending,
            self.inputs.probe,
            k=self.k,
            quantile=self.quantile,
            batch_size=self.batch_size,
            progress=self.progress,
            accelerator=_single_process_accelerator(self.device),
        )
        layer_names = np.asarray(found[schema.LAYER])
        per_layer = {}
        for layer in pending:
            rows = found.select(np.flatnonzero(layer_names == layer))  # in unit order
            rows = _select_units(rows, self.units, layer)
            per_layer[layer] = materialize_images(
                rows, probe_images=self.inputs.probe, progress=self.progress
            )
        return per_layer

    def describe_layer(self, exemplars: datasets.Dataset) -> datasets.Dataset:
        """The descriptions of one layer's units; dead units get the marker, not a caption."""
        dead = (
            exemplars[schema.DEAD]
            if schema.DEAD in exemplars.column_names
            else [False] * len(exemplars)
        )
        live = [index for index, is_dead in enumerate(dead) if not is_dead]
        described: dict[int, dict] = {}
        if live and self.dissect is not None:
            described = dict(zip(live, self.dissect.describe(exemplars.select(live))))
        elif live:
            captions = describe_exemplars(
                exemplars.select(live),
                self.captioner,
                self.processor,
                batch_size=self.batch_size,
                progress=self.progress,
                **self.generation,
            )
            described = dict(zip(live, captions.to_list()))
        features = schema.RUN_DESCRIPTION_FEATURES
        if self.verification is not None:
            described = self._verify(exemplars, described)
            features = datasets.Features({**features, **verification_features()})
        keys = exemplars.select_columns([schema.LAYER, schema.UNIT])
        rows = [
            {
                **_run_row(described.get(index), key[schema.LAYER], key[schema.UNIT]),
                schema.DESCRIBED_BY: self.described_by,
            }
            for index, key in enumerate(keys)
        ]
        if self.verification is not None:
            for index, row in enumerate(rows):
                verified = described.get(index) or unverified_record("dead unit")
                row.update({name: verified[name] for name in VERIFICATION_COLUMNS})
        return datasets.Dataset.from_list(rows, features=features)

    def _verify(self, exemplars: datasets.Dataset, described: dict[int, dict]) -> dict:
        if not described:
            return described
        layer = exemplars[0][schema.LAYER]
        verified, cost = verify_layer(
            self.verification, self.inputs.model, layer, exemplars, described,
            self.captioner, self.processor, self.generation, self.progress,
        )  # fmt: skip
        logger.info("verified %s: %s", layer, cost.per_unit())
        return verified


def _run_row(caption: dict | None, layer: str, unit: int) -> dict[str, Any]:
    """A row of the run's output: the caption of a live unit, or the dead-unit marker."""
    scores = (schema.SCORE, schema.CAPTIONER_LOG_PROB, schema.PRIOR_LOG_PROB)
    if caption is None:
        return {schema.LAYER: layer, schema.UNIT: unit, schema.DESCRIPTION:
                schema.DEAD_UNIT_DESCRIPTION, **dict.fromkeys(scores, math.nan),
                schema.DEAD: True}  # fmt: skip
    row = {name: caption[name] for name in schema.DESCRIPTION_COLUMNS}
    for name in scores:  # a score that overflowed float32 is no score: NaN, never ±3.4e38
        value = row[name]
        if value is not None and not (math.isfinite(value) and abs(value) < 3e38):
            row[name] = math.nan
    return {**row, schema.DEAD: False}


def _describe_resumably(
    output_dir: Path,
    run: _LayerRun,
    settings: dict,
    *,
    overwrite: bool,
    report_title: str | None,
) -> datasets.Dataset:
    """Each layer's exemplars, then its descriptions, are committed by a rename under
    ``.state/<layer>/`` as soon as they exist; a rerun redoes only what is missing."""
    layers = run.inputs.layers
    state, finished = prepare_output(output_dir, settings, layers, overwrite)
    if finished:
        logger.info("%s already holds this run's results", output_dir)
        return datasets.load_from_disk(str(output_dir / DESCRIPTIONS_DIR))
    layer_dirs = {layer: state / layer_folder(layer) for layer in layers}
    pending = [layer for layer in layers if not (layer_dirs[layer] / EXEMPLARS_DIR).is_dir()]
    if pending:
        for layer, exemplars in run.find_exemplars(pending).items():
            commit_layer_exemplars(exemplars, layer_dirs[layer])
    all_exemplars, all_descriptions = [], []
    for layer in layers:
        exemplars = load_exemplars(layer_dirs[layer] / EXEMPLARS_DIR)
        if not (layer_dirs[layer] / DESCRIPTIONS_DIR).is_dir():
            commit_layer_descriptions(run.describe_layer(exemplars), layer_dirs[layer])
        all_exemplars.append(exemplars)
        all_descriptions.append(datasets.load_from_disk(str(layer_dirs[layer] / DESCRIPTIONS_DIR)))
    exemplars = _concatenate_exemplars(all_exemplars, layers)
    descriptions = datasets.concatenate_datasets(all_descriptions)
    write_outputs(output_dir, exemplars, descriptions, settings, report_title)
    return datasets.load_from_disk(str(output_dir / DESCRIPTIONS_DIR))


def _concatenate_exemplars(parts: list[datasets.Dataset], layers: list[str]) -> datasets.Dataset:
    """One exemplar set from per-layer ones; the metadata lists every layer."""
    metadata = schema.exemplar_metadata(parts[0])
    combined = datasets.concatenate_datasets(parts)
    metadata["layers"] = layers
    combined.info.description = schema.metadata_description(metadata)
    return combined


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


def _generation_settings(
    pmi_weight: float | None,
    pmi_strategy: str | None,
    num_beams: int | None,
    no_repeat_ngram_size: int | None,
    no_repeat_words: bool | None = None,
) -> dict[str, Any]:
    """The decoding settings of a run, checked."""
    if num_beams is not None and (not isinstance(num_beams, int) or num_beams < 1):
        raise ValueError(f"num_beams must be a positive integer, got {num_beams!r}")
    if pmi_weight is not None and not (pmi_weight >= 0.0 and np.isfinite(pmi_weight)):
        raise ValueError(f"pmi_weight must be a finite number >= 0, got {pmi_weight!r}")
    if no_repeat_ngram_size is not None and (
        not isinstance(no_repeat_ngram_size, int) or no_repeat_ngram_size < 0
    ):
        raise ValueError(
            f"no_repeat_ngram_size must be an integer >= 0, got {no_repeat_ngram_size!r}"
        )
    return {
        "pmi_weight": pmi_weight,
        "pmi_strategy": pmi_strategy,
        "num_beams": num_beams,
        "no_repeat_ngram_size": no_repeat_ngram_size,
        "no_repeat_words": None if no_repeat_words is None else bool(no_repeat_words),
    }


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
