"""``pipeline("neuron-description", model=...)``: exemplar-set rows in, descriptions out.

Importing ``milan_hf.pipeline_milan`` registers the task. Rows follow the shared exemplar-set
schema and need materialised ``images``. Many units are described per generate call (their
beams share every decoder step), ``batch_size`` units at a time, through the same path as
``milan_hf.describe`` (``milan_hf.inference``) and with the same defaults (the captioner's
``generation_config``)::

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

from milan_hf.inference import GENERATION_ARGUMENTS, describe_rows, processor_for
from milan_hf.modeling_milan import MilanCaptionerModel
from milan_hf.processing_milan import MilanProcessor

TASK = "neuron-description"


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
        processor = processor or processor_for(model)
        if not isinstance(processor, MilanProcessor):
            raise ValueError(f"Expected a MilanProcessor, got {type(processor).__name__}.")
        super().__init__(model=model, **kwargs)
        self.milan_processor = processor

    def _sanitize_parameters(self, **kwargs):
        unknown = set(kwargs) - set(GENERATION_ARGUMENTS)
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
        return {"rows": rows}

    def _forward(self, model_inputs: dict, **generate_kwargs) -> list[dict[str, Any]]:
        return describe_rows(
            model_inputs["rows"], self.model, self.milan_processor, **generate_kwargs
        )

    def postprocess(self, model_outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return model_outputs


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=NeuronDescriptionPipeline, pt_model=AutoModel, type="multimodal"
)
