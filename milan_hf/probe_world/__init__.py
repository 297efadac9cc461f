"""The probe world: scenes with ground-truth concept masks, units of known meaning, and
automatic MILANNOTATIONS-style annotations (see ``shared/DESIGN.md``, "The probe world").

- ``scenes``: seeded scenes and their per-pixel concept masks (``build_scene_dataset``).
- ``rendering``: concept(s) -> images that contain them (``render_concepts``).
- ``planted``: a model whose units compute documented functions (``planted_units_model``).
- ``probe_models``: small CNNs and a tiny ViT trained on probe-world tasks.
- ``annotation`` + ``phrasing``: IoU annotator and description grammar (``describe_by_iou``),
  the grammar's defect check and concept-naming rule (``description_defects``,
  ``names_concept``, ``expression_named``, ``is_filler``).
- ``synthetic_units``: unlimited seeded units of known meaning (``iter_synthetic_units``).
- ``planted_timm``: units planted into real timm architectures (``plant_units``).
"""

from .annotation import Annotation, SceneMasks, describe_by_iou, describe_unit
from .concepts import Concept, all_concepts, load_stamps
from .phrasing import (
    description_defects,
    expression_named,
    grammar_vocabulary,
    is_filler,
    names_concept,
    phrase,
)
from .planted import PlantedUnitsNet, planted_transform, planted_units, planted_units_model
from .planted_timm import PlantedTimmUnit, check_planted_units, plant_units, save_planted_model
from .probe_models import (
    ProbeModelSpec,
    default_probe_models,
    efficientnet_lite0,
    load_probe_model,
    probe_transform,
)
from .rendering import describe_scene, render_concept_images, render_concepts
from .scenes import Scene, build_scene_dataset, generate_scene, generate_scenes, region_masks
from .synthetic_units import (
    SyntheticUnitSettings,
    iter_synthetic_units,
    sample_expression,
    synthetic_unit_dataset,
)

__all__ = [
    "Annotation",
    "PlantedTimmUnit",
    "SyntheticUnitSettings",
    "check_planted_units",
    "description_defects",
    "expression_named",
    "is_filler",
    "iter_synthetic_units",
    "names_concept",
    "plant_units",
    "sample_expression",
    "save_planted_model",
    "synthetic_unit_dataset",
    "Concept",
    "PlantedUnitsNet",
    "ProbeModelSpec",
    "Scene",
    "SceneMasks",
    "all_concepts",
    "build_scene_dataset",
    "default_probe_models",
    "describe_by_iou",
    "describe_scene",
    "describe_unit",
    "efficientnet_lite0",
    "generate_scene",
    "generate_scenes",
    "grammar_vocabulary",
    "load_probe_model",
    "load_stamps",
    "phrase",
    "planted_transform",
    "planted_units",
    "planted_units_model",
    "probe_transform",
    "region_masks",
    "render_concept_images",
    "render_concepts",
]
