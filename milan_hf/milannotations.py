"""MILANNOTATIONS, the human-annotated exemplar sets of the MILAN paper, as a ``datasets`` builder.

MILANNOTATIONS (Hernandez et al., ICLR 2022, "Natural Language Descriptions of Deep Visual
Features") holds, for ~20k units of seven model/dataset pairs, the unit's top-15 exemplar images
with binary masks and three human descriptions. This module reads the release exactly as it was
published and yields the shared exemplar-set schema of :mod:`milan_hf.schema` plus
``descriptions`` and a ``source`` column naming the set (``"alexnet/imagenet"``).

Release layout (one folder per set, ``<network>/<dataset>/``, or the published zip of that
folder, ``https://milan.csail.mit.edu/data/<network>-<dataset>.zip``)::

    annotations.csv          columns layer,unit,summary; one row per human description
    <layer>/masks.npy        uint8 (units, k, 1, H, W) (a (units, k, H, W) array is also read)
    <layer>/ids.csv          units rows x k ints: indices of the exemplars in the source dataset
    <layer>/activations.csv  units rows x k floats (optional)
    <layer>/images.npy       uint8 (units, k, 3, H, W) (optional; float in [0, 1] is also read)
    <layer>/units.npy        unit number of each row (optional; rows are units 0..n-1 otherwise)

Conventions (the original's unless said otherwise):

- Units with at least three descriptions are kept, truncated to their first three in file
  order; rows come in the order units first appear in ``annotations.csv``.
- The release stores no per-unit threshold: ``threshold`` is NaN. Without ``activations.csv``,
  ``activations`` are NaN. ``dead`` is False (every annotated unit fired).
- Sets sourced from ImageNet ship no ``images.npy`` (ImageNet cannot be redistributed). Their
  ``ids`` index ``torchvision.datasets.ImageFolder(<ImageNet val>)``: class folders sorted by
  name, files sorted by name inside each, 50,000 images. Given ``imagenet_dir`` the images are
  recovered with the same Resize(256) + CenterCrop(224) the exemplars were computed with (the
  original loader squashed them to 224x224 instead). ``<data_dir>/imagenet/val`` is used when
  present, as the original did; without ImageNet those rows carry no images (logged once).
- Every config has ``train``/``test`` splits. With no held-out sets they are the paper's
  within-network split: each set's units are shuffled with a seed derived from ``seed`` and the
  set's name, and ``int(0.1 * n)`` of them are held out (so a set's split is the same alone or
  inside a grouping). With held-out sets (the across-* and leave-one-out experiments) ``test``
  holds every unit of the held-out sets and ``train`` every unit of the others.

Besides the seven released sets, any directory of sets in the same layout
(``<data_dir>/<network>/<dataset>/``) is read: ``load_milannotations("all", data_dir=...)``,
a set, a network or a dataset name, ``not-<name>``, and ``held_out=[<names>]`` all work on
discovered sets.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from milan_hf import schema

logger = logging.getLogger(__name__)

#: Where the MILAN authors host the release: one zip per set.
RELEASE_HOST = "https://milan.csail.mit.edu/data"

#: The seven released sets, ``<network>/<dataset>``.
MILANNOTATIONS_SETS = (
    "alexnet/imagenet",
    "alexnet/places365",
    "resnet152/imagenet",
    "resnet152/places365",
    "biggan/imagenet",
    "biggan/places365",
    "dino_vits8/imagenet",
)
_BASE = MILANNOTATIONS_SETS[:6]
_CLASSIFIERS = _BASE[:4]
_GENERATORS = _BASE[4:]


def _only(sets: Sequence[str], part: str) -> tuple[str, ...]:
    return tuple(s for s in sets if part in s.split("/"))


def config_name_of(set_name: str) -> str:
    """The config name of a set: ``alexnet/imagenet`` -> ``alexnet-imagenet`` (no ``/`` allowed)."""
    return set_name.replace("/", "-")


def release_url(set_name: str) -> str:
    """The original download URL of a released set."""
    return f"{RELEASE_HOST}/{config_name_of(set_name)}.zip"


#: The original groupings: name -> sets. Leave-one-out is over the six base sets.
MILANNOTATIONS_GROUPINGS: dict[str, tuple[str, ...]] = {
    "all": MILANNOTATIONS_SETS,
    "base": _BASE,
    "cls": _CLASSIFIERS,
    "gen": _GENERATORS,
    "imagenet": _only(_BASE, "imagenet"),
    "places365": _only(_BASE, "places365"),
    "alexnet": _only(_BASE, "alexnet"),
    "resnet152": _only(_BASE, "resnet152"),
    "biggan": _only(_BASE, "biggan"),
    **{f"not-{config_name_of(s)}": tuple(o for o in _BASE if o != s) for s in _BASE},
}

#: The paper's across-* and leave-one-out experiments as named splits:
#: name -> (sets, held-out sets). ``train`` = sets minus held out, ``test`` = held out.
#: The within-network experiment is every set config's own ``train``/``test``.
GENERALIZATION_SPLITS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "across-network-alexnet-to-resnet152": (_CLASSIFIERS, _only(_BASE, "resnet152")),
    "across-network-resnet152-to-alexnet": (_CLASSIFIERS, _only(_BASE, "alexnet")),
    "across-dataset-imagenet-to-places365": (_BASE, _only(_BASE, "places365")),
    "across-dataset-places365-to-imagenet": (_BASE, _only(_BASE, "imagenet")),
    "across-task-cls-to-gen": (_BASE, _GENERATORS),
    "across-task-gen-to-cls": (_BASE, _CLASSIFIERS),
    "across-arch-base-to-dino_vits8": (MILANNOTATIONS_SETS, ("dino_vits8/imagenet",)),
    **{f"leave-one-out-{config_name_of(s)}": (_BASE, (s,)) for s in _BASE},
}

_ANNOTATIONS_FILE = "annotations.csv"
_ANNOTATION_COLUMNS = ("layer", "unit", "summary")
_IMAGENET = "imagenet"
# Hash of this file: a change to the loader invalidates prepared caches.
_LOADER_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


@dataclass
class MilannotationsConfig(datasets.BuilderConfig):
    """One MILANNOTATIONS config: which sets, and how to split them.

    Args:
        sets: ``<network>/<dataset>`` names; empty means every set found in ``data_dir``.
        held_out: sets whose units form ``test`` whole; empty means the within-network split.
        test_fraction: fraction of each set's units held out by the within-network split.
        seed: seed of the within-network shuffle.
        annotation_count: units with fewer descriptions are dropped, extra ones cut.
        imagenet_dir: ImageNet validation folder (class sub-folders) for ImageNet-sourced sets.
        source_fingerprint: sizes and times of the source files, so edited data re-prepare.
    """

    sets: tuple[str, ...] = ()
    held_out: tuple[str, ...] = ()
    test_fraction: float = 0.1
    seed: int = 0
    annotation_count: int = 3
    imagenet_dir: str | None = None
    source_fingerprint: str | None = None


def _builder_configs() -> list[MilannotationsConfig]:
    configs = [
        MilannotationsConfig(name=config_name_of(s), sets=(s,), description=f"The {s} set.")
        for s in MILANNOTATIONS_SETS
    ]
    configs += [
        MilannotationsConfig(
            name=name, sets=sets, description=f"Grouping {name}: {', '.join(sets)}."
        )
        for name, sets in MILANNOTATIONS_GROUPINGS.items()
    ]
    configs += [
        MilannotationsConfig(
            name=name,
            sets=sets,
            held_out=held_out,
            description=f"Split {name}: test on {', '.join(held_out)}, train on the rest.",
        )
        for name, (sets, held_out) in GENERALIZATION_SPLITS.items()
    ]
    return configs


# --------------------------------------------------------------------------------------------
# Finding sets: a data_dir folder or zip, or the original download.
# --------------------------------------------------------------------------------------------


def _is_offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    return datasets.config.HF_HUB_OFFLINE or any(
        os.environ.get(flag, "").upper() in {"1", "ON", "YES", "TRUE"} for flag in flags
    )


def discover_milannotations(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Return ``{"<network>/<dataset>": path}`` for every set in ``data_dir``.

    A set is a folder ``<network>/<dataset>/`` holding ``annotations.csv`` or layer folders with
    ``masks.npy``, a zip ``<network>/<dataset>.zip``, or a released set's published zip
    ``<network>-<dataset>.zip``. ``data_dir`` may also be one set's own folder.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"MILANNOTATIONS data_dir not found: {root}")
    if _looks_like_set(root):
        return {f"{root.parent.name}/{root.name}": root}
    found: dict[str, Path] = {}
    for network_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for child in sorted(network_dir.iterdir()):
            if child.is_dir() and _looks_like_set(child):
                found[f"{network_dir.name}/{child.name}"] = child
            elif child.is_file() and child.suffix == ".zip":
                found.setdefault(f"{network_dir.name}/{child.stem}", child)
    for set_name in MILANNOTATIONS_SETS:
        published_zip = root / f"{config_name_of(set_name)}.zip"
        if published_zip.is_file():
            found.setdefault(set_name, published_zip)
    return dict(sorted(found.items()))


def _looks_like_set(folder: Path) -> bool:
    if (folder / _ANNOTATIONS_FILE).is_file():
        return True
    return any((child / "masks.npy").is_file() for child in folder.iterdir() if child.is_dir())


def _set_root_in(extracted: Path, origin: str) -> Path:
    """The folder of a set inside an extracted zip (the published zips are flat)."""
    if _looks_like_set(extracted):
        return extracted
    candidates = sorted({p.parent for p in extracted.rglob(_ANNOTATIONS_FILE)})
    candidates = candidates or sorted({p.parent.parent for p in extracted.rglob("masks.npy")})
    if len(candidates) != 1:
        raise ValueError(
            f"{origin}: expected one MILANNOTATIONS set (annotations.csv + layer folders) in the "
            f"zip, found {len(candidates)}"
        )
    return candidates[0]


def _locate_set(
    set_name: str, data_dir: str | None, download_config: datasets.DownloadConfig
) -> Path:
    """Return the folder of one set: from ``data_dir`` (folder or zip) or the original URL."""
    dl_manager = datasets.DownloadManager(download_config=download_config)
    if data_dir is not None:
        found = discover_milannotations(data_dir)
        if set_name not in found:
            raise FileNotFoundError(
                f"MILANNOTATIONS set {set_name!r} not found in {data_dir}: expected a folder "
                f"{Path(data_dir) / set_name} (annotations.csv + layer folders) or a zip "
                f"{Path(data_dir) / (config_name_of(set_name) + '.zip')}; found {sorted(found)}"
            )
        path = found[set_name]
        if path.is_dir():
            return path
        return _set_root_in(Path(dl_manager.extract(str(path))), origin=str(path))

    if set_name not in MILANNOTATIONS_SETS:
        raise ValueError(
            f"{set_name!r} is not a released MILANNOTATIONS set ({', '.join(MILANNOTATIONS_SETS)});"
            " pass data_dir=<folder with <network>/<dataset>/annotations.csv>"
        )
    url = release_url(set_name)
    how_to = (
        f"download {url} yourself and pass data_dir=<folder holding "
        f"{config_name_of(set_name)}.zip or {set_name}/>"
    )
    if _is_offline():
        raise ConnectionError(f"offline mode: cannot download MILANNOTATIONS from {url}; {how_to}")
    try:
        extracted = dl_manager.download_and_extract(url)
    except Exception as error:  # any network failure: say what to do instead
        message = f"could not download MILANNOTATIONS from {url} ({error}); {how_to}"
        raise ConnectionError(message) from error
    return _set_root_in(Path(extracted), origin=url)


def _fingerprint(paths: Sequence[Path]) -> str:
    """Hash of names, sizes and modification times of every file under ``paths``."""
    hasher = hashlib.sha256()
    for path in paths:
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file():
                stat = file.stat()
                hasher.update(f"{file}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return hasher.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Reading one set.
# --------------------------------------------------------------------------------------------


@dataclass
class _LayerFiles:
    folder: Path
    masks: np.ndarray  # (units, k, H, W), memory-mapped
    ids: np.ndarray  # (units, k)
    activations: np.ndarray | None  # (units, k)
    images: np.ndarray | None  # (units, k, 3, H, W), memory-mapped
    row_of_unit: dict[int, int]


@dataclass
class _SetFiles:
    name: str
    root: Path
    annotations_file: Path
    descriptions: dict[tuple[str, int], list[str]]  # in order of first appearance
    layers: dict[str, _LayerFiles]
    mask_size: tuple[int, int]

    @property
    def dataset(self) -> str:
        return self.name.split("/")[-1]

    @property
    def has_images_npy(self) -> bool:
        return any(layer.images is not None for layer in self.layers.values())


def _read_matrix_csv(path: Path, dtype: type, rows: int, k: int, masks_file: Path) -> np.ndarray:
    try:
        matrix = np.loadtxt(path, delimiter=",", dtype=dtype, ndmin=2)
    except ValueError as error:
        raise ValueError(f"{path}: not a comma-separated matrix of numbers ({error})") from error
    if matrix.shape[0] != rows:
        raise ValueError(
            f"{path}: lists {matrix.shape[0]} units but {masks_file} holds masks for {rows}; "
            "the layer folder is inconsistent"
        )
    if matrix.shape[1] != k:
        raise ValueError(f"{path}: has {matrix.shape[1]} columns, {masks_file} has k={k} exemplars")
    return matrix


def _memory_map(path: Path) -> np.ndarray:
    # Not np.load: `datasets` patches it in builder modules for streaming, which breaks mmap.
    # open_memmap refuses pickled object arrays, so it is safe on untrusted files.
    return np.lib.format.open_memmap(str(path), mode="r")


def _read_layer(folder: Path) -> _LayerFiles:
    masks_file = folder / "masks.npy"
    if not masks_file.is_file():
        raise FileNotFoundError(f"layer folder {folder} has no masks.npy")
    masks = _memory_map(masks_file)
    if masks.ndim == 5 and masks.shape[2] == 1:
        masks = masks[:, :, 0]
    if masks.ndim != 4:
        raise ValueError(f"{masks_file}: expected (units, k, 1, H, W) masks, got {masks.shape}")
    units, k = masks.shape[:2]

    ids_file = folder / "ids.csv"
    if not ids_file.is_file():
        raise FileNotFoundError(f"layer folder {folder} has no ids.csv")
    ids = _read_matrix_csv(ids_file, np.int64, units, k, masks_file)

    activations_file = folder / "activations.csv"
    activations = None
    if activations_file.is_file():
        activations = _read_matrix_csv(activations_file, np.float32, units, k, masks_file)

    images_file = folder / "images.npy"
    images = None
    if images_file.is_file():
        images = _memory_map(images_file)
        expected = (units, k, 3, *masks.shape[2:])
        if images.shape != expected:
            raise ValueError(
                f"{images_file}: shape {images.shape} does not match {masks_file} "
                f"(expected {expected})"
            )

    units_file = folder / "units.npy"
    if units_file.is_file():
        unit_numbers = np.asarray(_memory_map(units_file)).reshape(-1)
        if len(unit_numbers) != units:
            raise ValueError(
                f"{units_file}: lists {len(unit_numbers)} units but {masks_file} holds {units}"
            )
    else:
        unit_numbers = np.arange(units)
    row_of_unit = {int(unit): row for row, unit in enumerate(unit_numbers)}
    return _LayerFiles(folder, masks, ids, activations, images, row_of_unit)


def _read_set(set_name: str, root: Path) -> _SetFiles:
    annotations_file = root / _ANNOTATIONS_FILE
    if not annotations_file.is_file():
        raise FileNotFoundError(
            f"MILANNOTATIONS set {set_name!r}: {annotations_file} not found (each set needs "
            "annotations.csv with columns layer,unit,summary)"
        )
    with annotations_file.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _ANNOTATION_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{annotations_file}: missing column(s) {missing}")
        descriptions: dict[tuple[str, int], list[str]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                unit = int(row["unit"])
            except ValueError as error:
                raise ValueError(f"{annotations_file}:{line}: bad unit {row['unit']!r}") from error
            descriptions.setdefault((row["layer"], unit), []).append(row["summary"])

    layers: dict[str, _LayerFiles] = {}
    for layer in dict.fromkeys(layer for layer, _ in descriptions):
        folder = root / layer
        if not folder.is_dir():
            raise ValueError(
                f"{annotations_file}: layer {layer!r} has no masks: folder {folder} not found"
            )
        layers[layer] = _read_layer(folder)
    for layer, unit in descriptions:
        files = layers[layer]
        if unit not in files.row_of_unit:
            raise ValueError(
                f"{annotations_file}: unit {unit} of layer {layer!r} has no masks in "
                f"{files.folder / 'masks.npy'} (it holds units {min(files.row_of_unit)}.."
                f"{max(files.row_of_unit)})"
            )
    sizes = {tuple(files.masks.shape[2:]) for files in layers.values()}
    if len(sizes) > 1:
        raise ValueError(f"{root}: layers have masks of different sizes {sorted(sizes)}")
    if not sizes:
        raise ValueError(f"{annotations_file}: no annotated units")
    return _SetFiles(set_name, root, annotations_file, descriptions, layers, sizes.pop())


class _ImageNetCrops:
    """ImageNet validation images by ``ids.csv`` index, cut as the exemplars were.

    Indices follow ``torchvision.datasets.ImageFolder`` (sorted classes, sorted files), which is
    how the original code enumerated the images it computed exemplars on.
    """

    def __init__(self, folder: str, size: tuple[int, int]):
        from torchvision import datasets as tv_datasets
        from torchvision import transforms

        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"imagenet_dir not found: {root}")
        self.root = root
        self.paths = [path for path, _ in tv_datasets.ImageFolder(str(root)).samples]
        # Resize(256) + CenterCrop(224) at the original size, scaled alike for other mask sizes.
        self.transform = transforms.Compose(
            [transforms.Resize(round(min(size) * 256 / 224)), transforms.CenterCrop(size)]
        )

    def check(self, index: int, ids_file: Path) -> None:
        if not 0 <= index < len(self.paths):
            raise ValueError(
                f"{ids_file}: image id {index} is outside the {len(self.paths)} images of "
                f"{self.root} (ImageNet validation has 50,000)"
            )

    def __call__(self, index: int, ids_file: Path) -> Image.Image:
        self.check(index, ids_file)
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


def _images_from_npy(images: np.ndarray) -> list[Image.Image]:
    """(k, 3, H, W) uint8 or [0, 1] floats -> k PIL images."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        array = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    return [Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))) for image in array]


def _within_network_test_rows(set_name: str, count: int, fraction: float, seed: int) -> set[int]:
    """The rows a seeded shuffle of one set's units holds out (``int(fraction * count)``)."""
    rng = np.random.default_rng([seed, zlib.crc32(set_name.encode())])
    return set(rng.permutation(count)[: int(fraction * count)].tolist())


# --------------------------------------------------------------------------------------------
# The builder.
# --------------------------------------------------------------------------------------------


class MilannotationsBuilder(datasets.GeneratorBasedBuilder):
    """Builds MILANNOTATIONS configs (sets, groupings, generalisation splits) as Arrow datasets.

    Use :func:`load_milannotations`, or directly::

        builder = MilannotationsBuilder(config_name="base", data_dir=..., imagenet_dir=...)
        builder.download_and_prepare()
        splits = builder.as_dataset()
    """

    BUILDER_CONFIG_CLASS = MilannotationsConfig
    BUILDER_CONFIGS = _builder_configs()
    DEFAULT_CONFIG_NAME = "base"
    # One row holds k masks (and images): keep Arrow write batches small.
    DEFAULT_WRITER_BATCH_SIZE = 32

    def __init__(self, *args, cache_dir: str | None = None, **kwargs):
        downloads = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "downloads"
        self._download_config = datasets.DownloadConfig(cache_dir=str(downloads))
        self._sets: list[_SetFiles] | None = None
        self._imagenet_crops: _ImageNetCrops | None = None
        kwargs.setdefault("hash", _LOADER_HASH)
        super().__init__(*args, cache_dir=cache_dir, **kwargs)

    def _read_sets(self) -> list[_SetFiles]:
        if self._sets is not None:
            return self._sets
        config = self.config
        names = config.sets
        if not names:
            if config.data_dir is None:
                raise ValueError("a config without sets needs data_dir to discover them in")
            names = tuple(discover_milannotations(config.data_dir))
        unknown = [name for name in config.held_out if name not in names]
        if unknown:
            raise ValueError(f"held_out sets {unknown} are not among the config's sets {names}")
        if config.held_out and set(config.held_out) == set(names):
            raise ValueError(f"held_out {config.held_out} leaves no set to train on")
        self._sets = [
            _read_set(name, _locate_set(name, config.data_dir, self._download_config))
            for name in names
        ]
        sizes = {s.mask_size for s in self._sets}
        if len(sizes) > 1:
            by_set = {s.name: s.mask_size for s in self._sets}
            raise ValueError(f"sets have masks of different sizes, load them apart: {by_set}")
        without = [s.name for s in self._sets if self._needs_imagenet(s)]
        if without and config.imagenet_dir is None:
            logger.warning(
                "MILANNOTATIONS sets %s ship no images (ImageNet cannot be redistributed): their "
                "rows have no images. Pass imagenet_dir=<ImageNet validation folder> to add them.",
                ", ".join(without),
            )
        return self._sets

    @staticmethod
    def _needs_imagenet(set_files: _SetFiles) -> bool:
        return not set_files.has_images_npy and set_files.dataset == _IMAGENET

    def _info(self) -> datasets.DatasetInfo:
        sets = self._read_sets()
        with_images = any(
            s.has_images_npy or (self._needs_imagenet(s) and self.config.imagenet_dir) for s in sets
        )
        features = schema.exemplar_features(
            sets[0].mask_size, with_images=with_images, with_descriptions=True
        )
        features[schema.SOURCE] = datasets.Value("string")
        return datasets.DatasetInfo(
            description=__doc__,
            features=features,
            homepage="https://github.com/evandez/neuron-descriptions",
            citation=CITATION,
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager):
        # Check every ImageNet id up front: an error inside generation would come out wrapped.
        self._imagenet_crops = None
        needing = [s for s in self._read_sets() if self._needs_imagenet(s)]
        if needing and self.config.imagenet_dir is not None:
            crops = _ImageNetCrops(self.config.imagenet_dir, needing[0].mask_size)
            for set_files in needing:
                for files in set_files.layers.values():
                    for image_id in (files.ids.min(), files.ids.max()):
                        crops.check(int(image_id), files.folder / "ids.csv")
            self._imagenet_crops = crops
        return [
            datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"split": "train"}),
            datasets.SplitGenerator(name=datasets.Split.TEST, gen_kwargs={"split": "test"}),
        ]

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
        config = self.config
        with_images = schema.IMAGES in self.info.features
        for set_files in self._read_sets():
            units = [
                (layer, unit, texts[: config.annotation_count])
                for (layer, unit), texts in set_files.descriptions.items()
                if len(texts) >= config.annotation_count
            ]
            if config.held_out:
                in_test = set_files.name in config.held_out
                chosen = units if in_test == (split == "test") else []
            else:
                test_rows = _within_network_test_rows(
                    set_files.name, len(units), config.test_fraction, config.seed
                )
                chosen = [u for i, u in enumerate(units) if (i in test_rows) == (split == "test")]
            crops = self._imagenet_crops if self._needs_imagenet(set_files) else None
            for layer, unit, texts in chosen:
                files = set_files.layers[layer]
                row = files.row_of_unit[unit]
                k = files.ids.shape[1]
                example = {
                    schema.LAYER: layer,
                    schema.UNIT: unit,
                    schema.IDS: files.ids[row].tolist(),
                    schema.ACTIVATIONS: (
                        files.activations[row].tolist()
                        if files.activations is not None
                        else [float("nan")] * k
                    ),
                    schema.MASKS: (np.asarray(files.masks[row]) > 0).astype(np.uint8),
                    schema.THRESHOLD: float("nan"),
                    schema.DEAD: False,
                    schema.DESCRIPTIONS: list(texts),
                    schema.SOURCE: set_files.name,
                }
                if with_images:
                    if files.images is not None:
                        example[schema.IMAGES] = _images_from_npy(files.images[row])
                    elif crops is not None:
                        ids_file = files.folder / "ids.csv"
                        example[schema.IMAGES] = [crops(int(i), ids_file) for i in files.ids[row]]
                    else:
                        example[schema.IMAGES] = None
                yield f"{set_files.name}/{layer}/{unit}", example


# --------------------------------------------------------------------------------------------
# Public entry point.
# --------------------------------------------------------------------------------------------


def resolve_milannotations_name(name: str, available: Sequence[str]) -> tuple[str, ...]:
    """Return the sets among ``available`` that ``name`` denotes.

    ``name`` is ``"all"``, a released grouping (``base``, ``cls``, ``not-alexnet-imagenet``...)
    whose sets are all available, a set (``"alexnet/imagenet"`` or ``"alexnet-imagenet"``), a
    network or dataset name (every available set of it), or ``"not-<any of these>"``.
    """
    available = tuple(available)
    if name == "all":
        return available
    grouping = MILANNOTATIONS_GROUPINGS.get(name)
    if grouping is not None and all(s in available for s in grouping):
        return grouping
    for set_name in available:
        if name in (set_name, config_name_of(set_name)):
            return (set_name,)
    by_part = tuple(s for s in available if name in s.split("/"))
    if by_part:
        return by_part
    if name.startswith("not-"):
        excluded = resolve_milannotations_name(name[len("not-") :], available)
        return tuple(s for s in available if s not in excluded)
    raise ValueError(
        f"unknown MILANNOTATIONS name {name!r}: expected 'all', a grouping "
        f"({', '.join(n for n in MILANNOTATIONS_GROUPINGS if n != 'all')}), a split "
        f"({', '.join(GENERALIZATION_SPLITS)}), or one of the sets {list(available)}, their "
        "network or dataset names, or 'not-<name>'"
    )


def load_milannotations(
    name: str = "base",
    data_dir: str | os.PathLike | None = None,
    imagenet_dir: str | os.PathLike | None = None,
    split: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    held_out: Sequence[str] | None = None,
    seed: int = 0,
    test_fraction: float = 0.1,
) -> datasets.Dataset | datasets.DatasetDict:
    """Load MILANNOTATIONS (or any directory of sets in its layout) as exemplar-set rows.

    Args:
        name: a released set (``"alexnet/imagenet"``), a grouping (``"base"``, ``"cls"``,
            ``"gen"``, ``"imagenet"``, ``"places365"``, ``"alexnet"``, ``"resnet152"``,
            ``"biggan"``, ``"not-<set>"``, ``"all"``), a named split of
            :data:`GENERALIZATION_SPLITS`, or, with ``data_dir``, any set, network or dataset
            name found there (see :func:`resolve_milannotations_name`).
        data_dir: folder holding ``<network>/<dataset>/`` sets or the published zips. Without
            it, the released sets are downloaded from their original URLs.
        imagenet_dir: ImageNet validation folder (one sub-folder per class) from which the
            ImageNet-sourced sets get their images. Defaults to ``<data_dir>/imagenet/val`` when
            that exists (the original code's place for it); without one those rows have no
            images.
        split: ``"train"``, ``"test"``, ``"all"`` or any ``datasets`` split expression; None
            returns a ``DatasetDict`` with both.
        cache_dir: where prepared Arrow files and downloads go (the ``datasets`` cache by
            default).
        held_out: names (sets, networks, datasets, groupings) whose units form ``test`` whole,
            the rest ``train`` (e.g. ``held_out=["resnet152"]``). None: within-network split.
        seed: seed of the within-network shuffle.
        test_fraction: fraction of each set's units the within-network split holds out.
    """
    config_kwargs: dict = {"seed": seed, "test_fraction": test_fraction}
    available = _available_sets(data_dir, seed, test_fraction)
    if name in GENERALIZATION_SPLITS:
        if held_out is not None:
            raise ValueError(f"{name!r} already fixes its held-out sets; do not pass held_out")
        sets, held_out_sets = GENERALIZATION_SPLITS[name]
        missing = [s for s in sets if s not in available]
        if missing:
            raise FileNotFoundError(f"split {name!r} needs sets {missing}, not in {data_dir}")
    else:
        sets = resolve_milannotations_name(name, available)
        held_out_sets = ()
        if held_out is not None:
            held_out_sets = tuple(
                dict.fromkeys(s for n in held_out for s in resolve_milannotations_name(n, sets))
            )
            if not held_out_sets or set(held_out_sets) == set(sets):
                raise ValueError(
                    f"held_out={list(held_out)} must name some but not all of the sets {sets}"
                )
    config_kwargs.update(name=config_name_of(name), sets=sets, held_out=held_out_sets)
    if data_dir is not None:
        config_kwargs["data_dir"] = str(Path(data_dir).resolve())
        found = discover_milannotations(data_dir)
        config_kwargs["source_fingerprint"] = _fingerprint([found[s] for s in sets])
    if imagenet_dir is None and data_dir is not None:
        conventional = Path(data_dir) / "imagenet" / "val"
        imagenet_dir = conventional if conventional.is_dir() else None
    if imagenet_dir is not None:
        config_kwargs["imagenet_dir"] = str(Path(imagenet_dir).resolve())

    builder = MilannotationsBuilder(
        cache_dir=str(cache_dir) if cache_dir is not None else None, **config_kwargs
    )
    builder.download_and_prepare()
    return _as_dataset(builder, split)


def _available_sets(
    data_dir: str | os.PathLike | None, seed: int, test_fraction: float
) -> tuple[str, ...]:
    """The sets ``load_milannotations`` can draw on, after checking its split arguments."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not data_dir:
        return MILANNOTATIONS_SETS
    available = tuple(discover_milannotations(data_dir))
    if not available:
        raise FileNotFoundError(
            f"no MILANNOTATIONS sets in {data_dir}: expected <network>/<dataset>/ folders "
            "(annotations.csv and layer folders with masks.npy) or the published zips"
        )
    return available


def _as_dataset(
    builder: MilannotationsBuilder, split: str | None
) -> datasets.Dataset | datasets.DatasetDict:
    """``builder.as_dataset``, except that an empty split (the 10% test split of a set with
    fewer than 10 annotated units) is an empty Dataset instead of a "corresponds to no data"
    error."""
    counts = {name: info.num_examples for name, info in (builder.info.splits or {}).items()}
    empty = {name for name in ("train", "test") if not counts.get(name)}
    if not empty:
        return builder.as_dataset(split=split)

    def one(name: str) -> datasets.Dataset:
        if name not in empty:
            return builder.as_dataset(split=name)
        features = builder.info.features
        return datasets.Dataset.from_dict(
            {column: [] for column in features}, features=features, split=name
        )

    if split is None:
        return datasets.DatasetDict({name: one(name) for name in ("train", "test")})
    if split in ("train", "test"):
        return one(split)
    try:
        return builder.as_dataset(split=split)
    except ValueError as error:
        if "corresponds to no data" not in str(error):
            raise
        raise ValueError(
            f"split {split!r} reads the empty split(s) {sorted(empty)} of {builder.config.name!r}"
            f" ({counts}): the within-network split holds out int({builder.config.test_fraction}"
            " * units) of each set's units; ask for 'train' or 'test' alone, or for more units"
        ) from None


CITATION = """\
@inproceedings{hernandez2022natural,
  title     = {Natural Language Descriptions of Deep Visual Features},
  author    = {Hernandez, Evan and Schwettmann, Sarah and Bau, David and Bagashvili, Teona and
               Torralba, Antonio and Andreas, Jacob},
  booktitle = {International Conference on Learning Representations},
  year      = {2022},
  url       = {https://arxiv.org/abs/2201.11114}
}
"""
