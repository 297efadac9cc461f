"""milan_hf: describe the neurons of vision models in natural language (MILAN), the Hugging Face
way.

Importing the package registers the captioner and prior with ``AutoConfig``/``AutoModel`` and
the ``neuron-description`` pipeline, so ``from_pretrained`` and ``pipeline(...)`` need no
``trust_remote_code``. Everything else is imported on first use: ``import milan_hf`` stays cheap
for the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import schema
from .configuration_milan import MilanCaptionerConfig, MilanPriorConfig
from .modeling_milan import MilanCaptionerModel, MilanPriorModel

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily)
_LAZY = {
    # exemplar extraction
    "extract_exemplars": "exemplars",
    "materialize_images": "exemplars",
    "exemplar_metadata": "exemplars",
    "masks_from_maps": "exemplars",
    "load_exemplars": "exemplar_storage",
    "save_exemplars": "exemplar_storage",
    "export_original_layout": "exemplar_storage",
    "push_exemplars_to_hub": "exemplar_storage",
    "load_vision_model": "vision_models",
    "VisionModel": "vision_models",
    "load_probe_images": "probe_images",
    "ProbeImages": "probe_images",
    "UnitHistogram": "quantile_sketch",
    # captioner, prior, processing
    "MilanTokenizer": "tokenization_milan",
    "MilanProcessor": "processing_milan",
    "NeuronDescriptionPipeline": "pipeline_milan",
    # MILANNOTATIONS
    "load_milannotations": "milannotations",
    "MilannotationsBuilder": "milannotations",
    "MilannotationsConfig": "milannotations",
    "MILANNOTATIONS_SETS": "milannotations",
    "MILANNOTATIONS_GROUPINGS": "milannotations",
    "GENERALIZATION_SPLITS": "milannotations",
    "discover_milannotations": "milannotations",
    # evaluation
    "score_descriptions": "evaluation",
    "concept_accuracy": "evaluation",
    "results_table": "evaluation",
    "save_evaluation": "evaluation",
    "add_eval_results_to_card": "evaluation",
    "push_eval_results": "evaluation",
    "run_benchmark": "benchmark",
    # report
    "write_report": "report",
    # describe: exemplars -> descriptions, end to end
    "describe": "describer",
    "describe_default": "describer",
    "describe_exemplars": "describer",
    "load_captioner": "describer",
    "load_description_outputs": "describer",
    "push_descriptions_to_hub": "describer",
    "EMBEDDED_CAPTIONER": "describer",
    # applications: analysis, audit, editing (ablate units chosen by their descriptions)
    "ablate_units": "ablation",
    "ablation_curve": "ablation",
    "evaluate_accuracy": "ablation",
    "AccuracyEvaluator": "ablation",
    "analyze_descriptions": "analysis",
    "description_properties": "analysis",
    "audit_describe_outputs": "audit",
    "audit_descriptions": "audit",
    "match_descriptions": "audit",
    "run_spurious_text_experiment": "editing",
    "TextClassifierConfig": "editing",
    # generation internals worth reaching
    "PriorLogitsProcessor": "modeling_milan",
    "MilanGenerationOutput": "modeling_milan",
}

__all__ = [
    "schema",
    "MilanCaptionerConfig",
    "MilanPriorConfig",
    "MilanCaptionerModel",
    "MilanPriorModel",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'milan_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


# Registers the "neuron-description" pipeline task.
importlib.import_module(".pipeline_milan", __name__)
