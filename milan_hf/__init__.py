"""milan_hf: describe the neurons of vision models in natural language (MILAN), the Hugging Face
way.

The captioner and prior are registered with ``AutoConfig``/``AutoModel``, and the
``neuron-description`` pipeline with transformers, so ``from_pretrained`` and ``pipeline(...)``
need no ``trust_remote_code``. Registering needs torch and transformers (seconds to import), so
it happens when they are first needed: at ``import milan_hf`` if transformers is already
imported, otherwise as soon as transformers is imported, or when a model, config or the
pipeline is first read from ``milan_hf``. Everything else is imported on first use too, so
``milan-hf --help`` starts without torch, transformers or datasets.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily)
_LAZY = {
    "schema": None,  # the submodule itself
    # captioner and prior (reading one registers them with the Auto classes)
    "MilanCaptionerConfig": "configuration_milan",
    "MilanPriorConfig": "configuration_milan",
    "MilanCaptionerModel": "modeling_milan",
    "MilanPriorModel": "modeling_milan",
    # exemplar extraction
    "extract_exemplars": "exemplars",
    "materialize_images": "exemplars",
    "exemplar_metadata": "exemplars",
    "prepare_extraction": "exemplars",
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
    "MilanImageProcessor": "image_processing_milan",
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
    "describe_default": "default_run",
    "default_model": "default_run",
    "default_probe_images": "default_run",
    "describe_exemplars": "inference",
    "DissectSettings": "dissect",  # describe(method="dissect", dissect=DissectSettings(...))
    "load_captioner": "inference",
    "load_description_outputs": "describe_output",
    "write_descriptions_csv": "describe_output",
    "push_descriptions_to_hub": "hub",
    "descriptions_card": "hub",
    "EMBEDDED_CAPTIONER": "inference",
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

__all__ = list(_LAZY)

# Modules whose import needs transformers: reading a name from them registers milan_hf first.
_TRANSFORMERS_MODULES = {
    "configuration_milan",
    "modeling_milan",
    "tokenization_milan",
    "processing_milan",
    "pipeline_milan",
    "image_processing_milan",
    "inference",
    "describer",
    "benchmark",
    "evaluation",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'milan_hf' has no attribute {name!r}")
    module_name = _LAZY[name]
    if module_name is None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        if module_name in _TRANSFORMERS_MODULES:
            register_with_transformers()
        value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


_registered = False


def register_with_transformers() -> None:
    """Register the captioner and prior with ``AutoConfig``/``AutoModel`` and the
    ``neuron-description`` pipeline task (idempotent; imports torch and transformers)."""
    global _registered
    if _registered:
        return
    _registered = True
    for finder in [f for f in sys.meta_path if isinstance(f, _RegisterWhenTransformersLoads)]:
        sys.meta_path.remove(finder)
    # modeling_milan registers the Auto classes, pipeline_milan the task, both on import.
    importlib.import_module(".modeling_milan", __name__)
    importlib.import_module(".pipeline_milan", __name__)


def _milan_module_initializing() -> bool:
    """Whether a milan_hf module is half-imported (it is what imports transformers now): then
    registering would re-enter it, and that module registers what it defines itself."""
    return any(
        name.startswith(f"{__name__}.") and getattr(module.__spec__, "_initializing", False)
        for name, module in list(sys.modules.items())
        if getattr(module, "__spec__", None) is not None
    )


class _RegisterWhenTransformersLoads(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``transformers`` (or its pipelines) is imported, it lets the
    real finder load it and registers milan_hf right after, so ``AutoModel.from_pretrained`` and
    ``pipeline("neuron-description")`` work after a bare ``import milan_hf``."""

    _WATCHED = ("transformers", "transformers.pipelines")

    def __init__(self) -> None:
        self._finding = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self._WATCHED or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module_then_register(module: Any) -> None:
            load(module)
            if _registered or _milan_module_initializing():
                return
            try:
                register_with_transformers()
            except Exception as error:  # a broken optional install must not break transformers
                message = f"milan_hf could not register with transformers: {error}"
                warnings.warn(message, stacklevel=2)

        spec.loader.exec_module = exec_module_then_register  # type: ignore[method-assign]
        return spec


if "transformers" in sys.modules:
    register_with_transformers()
else:
    sys.meta_path.insert(0, _RegisterWhenTransformersLoads())
