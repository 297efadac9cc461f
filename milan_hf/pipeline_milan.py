"""``pipeline("neuron-description", model=...)``: exemplar-set rows in, descriptions out.

Importing ``milan_hf.pipeline_milan`` registers the task. Rows follow the shared exemplar-set
schema and need materialised ``images``. Many units are described per generate call (their
beams share every decoder step), ``batch_size`` units at a time::

    describer = pipeline("neuron-description", model="path/or/hub-id")
    describer(exemplar_dataset, batch_size=32, pmi_weight=0.2)
    # [{"layer": ..., "unit": ..., "description": ..., "score": ..., ...}, ...]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from milan_hf import schema
from milan_hf.modeling_milan import MilanCaptionerModel
from milan_hf.processing_milan import MilanProcessor

TASK = "neuron-description"
_GENERATE_ARGUMENTS = ("pmi_weight", "pmi_strategy", "num_beams", "max_length")


class NeuronDescriptionPipeline(Pipeline):
    """Describe units from their exemplar sets with a ``MilanCaptionerModel`` (PMI decoding)."""

    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_processor = False
    _load_video_processor = False

    def __init__(
        self, model: MilanCaptionerModel, processor: MilanProcessor | None = None, **kwargs
    ):
        if processor is None and getattr(model, "tokenizer", None) is not None:
            processor = MilanProcessor.from_model_config(model.config, model.tokenizer)
        elif processor is None:
            processor = MilanProcessor.from_pretrained(model.name_or_path)
        if not isinstance(processor, MilanProcessor):
            raise ValueError(f"Expected a MilanProcessor, got {type(processor).__name__}.")
        super().__init__(model=model, **kwargs)
        self.milan_processor = processor

    def _sanitize_parameters(self, **kwargs):
        unknown = set(kwargs) - set(_GENERATE_ARGUMENTS)
        if unknown:
            raise ValueError(f"Unknown neuron-description arguments: {sorted(unknown)}")
        return {}, dict(kwargs), {}

    def __call__(self, inputs: Any, batch_size: int | None = None, **kwargs) -> Any:
        """Describe one row (returns one dict) or a list/``datasets.Dataset`` of rows (returns
        a list of dicts), ``batch_size`` units per generate call (default 32)."""
        single = isinstance(inputs, Mapping)
        rows: Sequence = [inputs] if single else inputs
        batch_size = batch_size or self._batch_size or 32
        preprocess_params, forward_params, postprocess_params = self._sanitize_parameters(**kwargs)
        forward_params = {**self._forward_params, **forward_params}
        results = []
        starts = range(0, len(rows), batch_size)
        for start in tqdm(starts, desc="describe units", disable=len(starts) < 2):
            chunk = [rows[index] for index in range(start, min(start + batch_size, len(rows)))]
            results.extend(
                self.run_single(chunk, preprocess_params, forward_params, postprocess_params)
            )
        return results[0] if single else results

    def preprocess(self, rows: list[Mapping[str, Any]]) -> dict:
        inputs = dict(self.milan_processor(rows))
        inputs["names"] = [(row.get(schema.LAYER), row.get(schema.UNIT)) for row in rows]
        return inputs

    def _forward(self, model_inputs: dict, **generate_kwargs) -> dict:
        names = model_inputs.pop("names")
        output = self.model.generate(**model_inputs, **generate_kwargs)
        return {"names": names, "output": output}

    def postprocess(self, model_outputs: dict) -> list[dict[str, Any]]:
        output = model_outputs["output"]
        descriptions = self.milan_processor.batch_decode(output.sequences.tolist())
        results = []
        for index, (layer, unit) in enumerate(model_outputs["names"]):
            prior = output.prior_log_probs
            results.append(
                {
                    schema.LAYER: layer,
                    schema.UNIT: unit,
                    "description": descriptions[index],
                    "score": float(output.scores[index]),
                    "captioner_log_prob": float(output.captioner_log_probs[index]),
                    "prior_log_prob": None if prior is None else float(prior[index]),
                }
            )
        return results


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=NeuronDescriptionPipeline, pt_model=AutoModel, type="multimodal"
)
