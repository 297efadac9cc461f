"""The one batched inference path: exemplar rows → processor → captioner → descriptions.

``describe`` (and the CLI), the ``neuron-description`` pipeline, the benchmark, known-unit
evaluation and the training's BLEU validation all go through here:

* :func:`load_captioner` gives a ``MilanCaptionerModel`` and its ``MilanProcessor``.
* :func:`encode_rows` turns exemplar-set rows into the decoder's inputs (mask-pooled exemplar
  features and the exemplar mask).
* :func:`describe_rows` / :func:`describe_exemplars` decode them with ``generate`` (whose
  defaults are the captioner's ``generation_config``) and decode token ids to descriptions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from . import schema
from .configuration_milan import MilanCaptionerConfig
from .modeling_milan import MilanCaptionerModel, MilanGenerationOutput
from .processing_milan import MilanProcessor

#: Decoding settings callers may pass through (anything else is refused by ``generate``).
GENERATION_ARGUMENTS = ("pmi_weight", "pmi_strategy", "num_beams", "max_length",
                        "no_repeat_ngram_size")  # fmt: skip
_ROW_COLUMNS = (schema.LAYER, schema.UNIT, schema.IMAGES, schema.MASKS)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_captioner(
    captioner: str | Path | MilanCaptionerModel | None = None,
    device: torch.device | str = "cpu",
) -> tuple[MilanCaptionerModel, MilanProcessor]:
    """A ``MilanCaptionerModel`` (with its prior) and its ``MilanProcessor``, from a local
    directory, a Hub id or a loaded model; ``None`` means the captioner embedded in milan_hf."""
    if isinstance(captioner, MilanCaptionerModel):
        return captioner.to(device).eval(), processor_for(captioner)
    if captioner is None:
        from .describer import EMBEDDED_CAPTIONER  # the embedded default lives with describe

        captioner = EMBEDDED_CAPTIONER
    location = str(captioner)
    _check_captioner_location(location)
    try:
        # float32 whatever the stored precision (the embedded checkpoint is stored in float16).
        model = MilanCaptionerModel.from_pretrained(location, dtype=torch.float32)
        processor = MilanProcessor.from_pretrained(location)
    except OSError as error:
        raise FileNotFoundError(
            f"cannot load the captioner {location!r}: {error.args[0] if error.args else error}"
        ) from error
    return model.to(device).eval(), processor


def _check_captioner_location(location: str) -> None:
    """A local captioner must be a directory with a captioner config.json (one line if not)."""
    path = Path(location).expanduser()
    if not (path.exists() or location.startswith((".", "/", "~"))):
        return  # a Hub id
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"captioner {location!r} is not a captioner directory (no config.json there); "
            "give a directory written by save_pretrained / scripts/train_captioner.py, or a "
            "Hub id"
        )
    try:
        model_type = MilanCaptionerConfig.get_config_dict(str(path))[0].get("model_type")
    except (OSError, ValueError) as error:
        raise ValueError(f"captioner {location!r}: config.json cannot be read ({error})") from None
    if model_type != MilanCaptionerConfig.model_type:
        raise ValueError(
            f"captioner {location!r} holds a {model_type or 'model without model_type'!r} "
            f"model, not a MILAN captioner ({MilanCaptionerConfig.model_type!r}); pass a "
            "directory written by MilanCaptionerModel.save_pretrained, or omit it for the "
            "embedded captioner"
        )


def processor_for(model: MilanCaptionerModel) -> MilanProcessor:
    """The processor saved beside a loaded captioner (or built from a tokenizer attached to
    it as ``model.tokenizer``, as code written for older milan_hf versions does)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        return MilanProcessor.from_model_config(model.config, tokenizer)
    location = model.name_or_path
    if not location:
        raise ValueError(
            "this captioner was not loaded from a directory, so its MilanProcessor is unknown: "
            "pass one (MilanProcessor.from_model_config(model.config, tokenizer))"
        )
    return MilanProcessor.from_pretrained(location)


# ---------------------------------------------------------------------------------------------
# Encoding, decoding
# ---------------------------------------------------------------------------------------------


def encode_rows(
    rows: Sequence[Mapping[str, Any]], captioner: MilanCaptionerModel, processor: MilanProcessor
) -> dict[str, torch.Tensor]:
    """Exemplar-set rows (materialised ``images`` and ``masks``) → ``exemplar_features``
    (units, k, feature_size) and ``exemplar_mask`` (units, k) on the captioner's device."""
    device = next(captioner.parameters()).device
    inputs = processor(list(rows))
    features = captioner.encode_exemplars(
        inputs["pixel_values"].to(device), inputs["masks"].to(device)
    )
    return {"exemplar_features": features, "exemplar_mask": inputs["exemplar_mask"].to(device)}


def description_records(
    rows: Sequence[Mapping[str, Any]], output: MilanGenerationOutput, processor: MilanProcessor
) -> list[dict[str, Any]]:
    """One record per unit: ``layer``, ``unit``, ``description`` and its three scores."""
    descriptions = processor.batch_decode(output.sequences)
    scores = output.scores.float().cpu().tolist()
    captioner = output.captioner_log_probs.float().cpu().tolist()
    prior = output.prior_log_probs
    prior = [None] * len(rows) if prior is None else prior.float().cpu().tolist()
    return [
        {
            schema.LAYER: row.get(schema.LAYER),
            schema.UNIT: row.get(schema.UNIT),
            "description": description,
            "score": score,
            "captioner_log_prob": captioner_log_prob,
            "prior_log_prob": prior_log_prob,
        }
        for row, description, score, captioner_log_prob, prior_log_prob in zip(
            rows, descriptions, scores, captioner, prior
        )
    ]


def describe_rows(
    rows: Sequence[Mapping[str, Any]],
    captioner: MilanCaptionerModel,
    processor: MilanProcessor,
    **generation: Any,
) -> list[dict[str, Any]]:
    """Describe one batch of units (their beams share every decoder step); ``generation``:
    ``pmi_weight``, ``pmi_strategy``, ``num_beams``, ``max_length``, ``no_repeat_ngram_size``
    (each ``None`` or absent: the captioner's generation config)."""
    with torch.inference_mode():
        output = captioner.generate(**encode_rows(rows, captioner, processor), **generation)
    return description_records(rows, output, processor)


def row_batches(
    exemplars: datasets.Dataset | Sequence[Mapping[str, Any]],
    batch_size: int,
    progress: bool = False,
    columns: Sequence[str] = _ROW_COLUMNS,
) -> Iterator[list[dict[str, Any]]]:
    """The rows of an exemplar set (a ``datasets.Dataset`` or a list), ``batch_size`` at a
    time, with only ``columns`` read from a dataset."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(exemplars, datasets.Dataset):
        exemplars = exemplars.select_columns(
            [name for name in columns if name in exemplars.column_names]
        )
    starts = range(0, len(exemplars), batch_size)
    for start in tqdm(starts, desc="describing units", disable=not progress):
        batch = exemplars[start : start + batch_size]
        if isinstance(batch, dict):  # a Dataset slice is a dict of columns
            batch = [dict(zip(batch, values)) for values in zip(*batch.values())]
        yield list(batch)


def describe_exemplars(
    exemplars: datasets.Dataset | Sequence[Mapping[str, Any]],
    captioner: MilanCaptionerModel,
    processor: MilanProcessor,
    *,
    pmi_weight: float | None = None,
    pmi_strategy: str | None = None,
    num_beams: int | None = None,
    no_repeat_ngram_size: int | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> datasets.Dataset:
    """Describe every unit of an exemplar set whose ``images`` are materialised.

    Units are decoded ``batch_size`` at a time: all their beams share each decoder step.
    Settings left ``None`` come from the captioner's ``generation_config``. Returns the
    descriptions dataset (``layer``, ``unit``, ``description``, ``score``,
    ``captioner_log_prob``, ``prior_log_prob``), one row per unit, in the exemplar set's order.
    """
    from .describer import DESCRIPTION_COLUMNS, DESCRIPTION_FEATURES  # the output schema

    if isinstance(exemplars, datasets.Dataset) and schema.IMAGES not in exemplars.column_names:
        raise ValueError(
            "the exemplar set has no 'images' column: materialise it first "
            "(milan_hf.exemplars.materialize_images)"
        )
    generation = {
        "pmi_weight": pmi_weight,
        "pmi_strategy": pmi_strategy,
        "num_beams": num_beams,
        "no_repeat_ngram_size": no_repeat_ngram_size,
        "max_length": max_length,
    }
    records = []
    for rows in row_batches(exemplars, batch_size, progress):
        records += describe_rows(rows, captioner, processor, **generation)
    columns = {name: [record[name] for record in records] for name in DESCRIPTION_COLUMNS}
    return datasets.Dataset.from_dict(columns, features=DESCRIPTION_FEATURES)
