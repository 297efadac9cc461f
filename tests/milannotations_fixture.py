"""A tiny MILANNOTATIONS release written in the exact original layout, and a fake ImageNet val.

Each of the seven sets has two layers (7 and 8 rows of units) with k=5 exemplars and 16x16
masks. Descriptions are written round-robin (every unit's first description, then every unit's
second...) so that a reader must group them. Per set: rows 3 and 9 have only two descriptions
(dropped), row 1 has four (cut to three), and the last row has none, leaving 12 annotated units.
ImageNet-sourced sets ship without ``images.npy``; the second layer of every set has a
``units.npy`` with non-consecutive unit numbers; ``dino_vits8/imagenet`` has no
``activations.csv``.
"""

from __future__ import annotations

import csv
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from milan_hf.milannotations import MILANNOTATIONS_SETS, config_name_of

MASK_SIZE = 16
K = 5
ROWS_PER_LAYER = (7, 8)
UNITS_PER_SET = 12  # annotated units kept per set (see the module docstring)
IMAGENET_CLASSES = ("n01440764", "n01443537")
IMAGES_PER_CLASS = 4
_LAYERS = {
    "alexnet": ("conv1", "conv5"),
    "resnet152": ("layer1", "layer4"),
    "biggan": ("layer0", "layer4"),
    "dino_vits8": ("blocks.0.mlp.fc1", "blocks.9.mlp.fc1"),
}


def description_count(row: int, rows: int) -> int:
    """How many descriptions the fixture gives the unit in ``row`` (0-based) of a set."""
    if row == rows - 1:
        return 0
    if row % 6 == 3:
        return 2
    return 4 if row == 1 else 3


def write_set(root: Path, set_name: str, seed: int, mask_size: int = MASK_SIZE) -> None:
    """Write one set as ``root/<network>/<dataset>/`` in the original layout.

    Networks other than the released ones get layers ``features.0`` and ``features.3``.
    """
    network, dataset = set_name.split("/")
    layer_names = _LAYERS.get(network, ("features.0", "features.3"))
    folder = root / network / dataset
    rng = np.random.default_rng(seed)
    rows_total = sum(ROWS_PER_LAYER)
    annotated: list[tuple[str, int, int]] = []  # layer, unit, description count
    row = 0
    for layer, rows in zip(layer_names, ROWS_PER_LAYER):
        layer_dir = folder / layer
        layer_dir.mkdir(parents=True)
        masks = (rng.random((rows, K, 1, mask_size, mask_size)) > 0.7).astype(np.uint8)
        np.save(layer_dir / "masks.npy", masks)
        if dataset == "imagenet" and network != "biggan":
            ids = (np.arange(rows)[:, None] + np.arange(K)[None, :]) % (
                len(IMAGENET_CLASSES) * IMAGES_PER_CLASS
            )
        else:
            ids = np.arange(rows * K).reshape(rows, K) * 7
            images = rng.integers(0, 256, (rows, K, 3, mask_size, mask_size), dtype=np.uint8)
            np.save(layer_dir / "images.npy", images)
        np.savetxt(layer_dir / "ids.csv", ids, delimiter=",", fmt="%i")
        if network != "dino_vits8":
            activations = np.sort(rng.random((rows, K)), axis=1)[:, ::-1]
            np.savetxt(layer_dir / "activations.csv", activations, delimiter=",", fmt="%.5e")
        units = np.arange(rows)
        if layer == layer_names[1]:
            units = 3 * np.arange(rows) + 1
            np.save(layer_dir / "units.npy", units)
        for unit in units:
            annotated.append((layer, int(unit), description_count(row, rows_total)))
            row += 1

    with (folder / "annotations.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", "unit", "summary"])
        for index in range(4):
            for layer, unit, count in annotated:
                if index < count:
                    writer.writerow([layer, unit, description(set_name, layer, unit, index)])


def description(set_name: str, layer: str, unit: int, index: int) -> str:
    return f"{set_name} {layer} unit {unit}, description {index}"


def write_milannotations(root: Path, sets: tuple[str, ...] = MILANNOTATIONS_SETS) -> Path:
    """Write the sets as extracted folders ``root/<network>/<dataset>/``; return ``root``."""
    for seed, set_name in enumerate(sets):
        write_set(root, set_name, seed)
    return root


def write_milannotations_zips(root: Path, sets: tuple[str, ...] = MILANNOTATIONS_SETS) -> Path:
    """Write the sets as the published flat zips ``root/<network>-<dataset>.zip``."""
    staging = root / "_staging"
    write_milannotations(staging, sets)
    for set_name in sets:
        folder = staging / set_name
        with zipfile.ZipFile(root / f"{config_name_of(set_name)}.zip", "w") as archive:
            for file in sorted(folder.rglob("*")):
                archive.write(file, file.relative_to(folder).as_posix())
    shutil.rmtree(staging)
    return root


def imagenet_colour(index: int) -> tuple[int, int, int]:
    """The colour of the centre of fake ImageNet image ``index`` (ImageFolder order)."""
    return (20 + 28 * index, 220 - 25 * index, 60 + 21 * index)


def write_fake_imagenet(root: Path) -> Path:
    """Write an ImageNet-val-like folder of JPEGs: ``root/<wnid>/ILSVRC2012_val_*.JPEG``.

    Each image is 64x32 with a coloured centre and black 12-px side bands: Resize+CenterCrop to
    16 px keeps only the centre colour, squashing would pull in the black bands.
    """
    index = 0
    for wnid in IMAGENET_CLASSES:
        (root / wnid).mkdir(parents=True)
        for _ in range(IMAGES_PER_CLASS):
            pixels = np.zeros((32, 64, 3), dtype=np.uint8)
            pixels[:, 12:52] = imagenet_colour(index)
            # File names sort in the same order as they are numbered.
            name = f"ILSVRC2012_val_{index + 1:08d}.JPEG"
            Image.fromarray(pixels).save(root / wnid / name, quality=95)
            index += 1
    return root
