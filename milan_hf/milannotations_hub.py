"""Convert MILANNOTATIONS to parquet and push it to the Hugging Face Hub with a dataset card.

The library code of ``scripts/push_milannotations.py`` (whose CLI is :func:`main`).

Each set becomes a config with ``train``/``test`` parquet files (the seeded within-network split);
groupings (``base``, ``cls``, ``not-<set>``...) and the paper's generalisation splits
(``across-*``, ``leave-one-out-*``) become configs that point at the same files, so nothing is
stored twice. Afterwards users need only ``load_dataset("<repo_id>", "<config>")``.

Examples::

    # the seven released sets, images of the ImageNet-sourced sets from a local ImageNet val
    python scripts/push_milannotations.py my-org/milannotations \\
        --data-dir ~/milannotations --imagenet-dir ~/imagenet/val

    # any directory of sets in the same layout, written locally instead of pushed
    python scripts/push_milannotations.py my-org/probe-annotations --data-dir probe_corpus \\
        --output-dir exported --no-push
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

from milan_hf import schema
from milan_hf.hub import push_dataset_folder
from milan_hf.milannotations import (
    CITATION,
    GENERALIZATION_SPLITS,
    MILANNOTATIONS_GROUPINGS,
    MILANNOTATIONS_SETS,
    RELEASE_HOST,
    config_name_of,
    discover_milannotations,
    load_milannotations,
)
from milan_hf.staged_output import staged_directory

CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "hub_cards" / "milannotations.md"
MAX_SHARD_BYTES = 500 * 2**20
SPLITS = ("train", "test")


def load_sets(
    sets: Sequence[str],
    data_dir: str | None,
    imagenet_dir: str | None,
    cache_dir: str | None,
    seed: int,
    test_fraction: float,
    with_images: bool,
) -> dict[str, datasets.DatasetDict]:
    """Load every set on its own, with one column layout for all (parquet configs mix them)."""
    loaded = {
        name: load_milannotations(
            name,
            data_dir=data_dir,
            imagenet_dir=imagenet_dir,
            cache_dir=cache_dir,
            seed=seed,
            test_fraction=test_fraction,
        )
        for name in sets
    }
    with_images = with_images and any(schema.IMAGES in d["train"].features for d in loaded.values())
    for name, splits in loaded.items():
        for split, rows in splits.items():
            has_images = schema.IMAGES in rows.features
            if has_images and not with_images:
                rows = rows.remove_columns(schema.IMAGES)
            elif with_images and not has_images:
                # A set without images (ImageNet, no imagenet_dir) next to sets with them.
                images = datasets.List(datasets.Image())
                rows = rows.add_column(schema.IMAGES, [None] * rows.num_rows, feature=images)
            order = [c for c in schema_columns(with_images) if c in rows.column_names]
            splits[split] = rows.select_columns(order)
        loaded[name] = splits
    return loaded


def schema_columns(with_images: bool) -> list[str]:
    features = schema.exemplar_features(with_images=with_images, with_descriptions=True)
    return [*features, schema.SOURCE]


def write_parquet(loaded: dict[str, datasets.DatasetDict], output_dir: Path) -> None:
    """Write ``data/<config>/<split>-<i>-of-<n>.parquet`` shards of at most ~500 MB."""
    for name, splits in loaded.items():
        folder = output_dir / "data" / config_name_of(name)
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in splits.items():
            shards = max(1, math.ceil(rows.data.nbytes / MAX_SHARD_BYTES))
            for index in range(shards):
                shard = rows.shard(shards, index, contiguous=True)
                shard.to_parquet(str(folder / f"{split}-{index:05d}-of-{shards:05d}.parquet"))


def hub_configs(loaded: dict[str, datasets.DatasetDict]) -> list[dict]:
    """The ``configs:`` of the card: sets, groupings and splits whose sets were all pushed."""

    def files(sets: Sequence[str], split: str | None) -> list[str]:
        pattern = f"{split}-*.parquet" if split else "*.parquet"
        return [f"data/{config_name_of(s)}/{pattern}" for s in sets]

    sizes = {n: d["train"].features[schema.MASKS].feature.shape for n, d in loaded.items()}

    def pushable(sets: Sequence[str]) -> bool:
        # Parquet files of one config must share a schema, masks included.
        return all(s in loaded for s in sets) and len({sizes[s] for s in sets}) == 1

    configs = []
    for name in loaded:
        data_files = [{"split": split, "path": files([name], split)[0]} for split in SPLITS]
        configs.append({"config_name": config_name_of(name), "data_files": data_files})
    groupings = dict(MILANNOTATIONS_GROUPINGS)
    groupings["all"] = tuple(loaded)
    for name, sets in groupings.items():
        if len(sets) > 1 and pushable(sets):
            data_files = [{"split": split, "path": files(sets, split)} for split in SPLITS]
            configs.append({"config_name": name, "data_files": data_files})
    for name, (sets, held_out) in GENERALIZATION_SPLITS.items():
        if pushable(sets):
            train = [s for s in sets if s not in held_out]
            data_files = [
                {"split": "train", "path": files(train, None)},
                {"split": "test", "path": files(held_out, None)},
            ]
            configs.append({"config_name": name, "data_files": data_files})
    names = [c["config_name"] for c in configs]
    default = next(n for n in ("base", "all", names[0]) if n in names)
    configs[names.index(default)]["default"] = True
    return configs


def size_category(rows: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if rows < bound:
            return label
    return "100K<n<1M"


def render_card(
    repo_id: str,
    loaded: dict[str, datasets.DatasetDict],
    configs: list[dict],
    seed: int,
    test_fraction: float,
) -> DatasetCard:
    """Fill ``hub_cards/milannotations.md`` for these sets and configs."""
    first = next(iter(loaded.values()))["train"]
    units = {n: sum(r.num_rows for r in d.values()) for n, d in loaded.items()}
    total = sum(units.values())
    descriptions = sum(
        len(texts) for d in loaded.values() for r in d.values() for texts in r[schema.DESCRIPTIONS]
    )
    with_images = schema.IMAGES in first.features
    imagenet_sets = [n for n in loaded if n.endswith("/imagenet") and not n.startswith("biggan/")]
    card_data = DatasetCardData(
        pretty_name="MILANNOTATIONS",
        language=["en"],
        license="other",
        license_name="milannotations",
        annotations_creators=["crowdsourced"],
        task_categories=["image-to-text"],
        size_categories=[size_category(total)],
        tags=["interpretability", "neuron-descriptions", "milan"],
        configs=configs,
    )

    def describe(config: dict) -> dict:
        """Which sets a config's splits hold, for the card's table."""
        sets = {}
        for entry in config["data_files"]:
            paths = [entry["path"]] if isinstance(entry["path"], str) else entry["path"]
            sets[entry["split"]] = ", ".join(f"`{p.split('/')[1]}`" for p in paths)
        if sets["train"] == sets["test"]:
            share = f"{1 - test_fraction:.0%} / {test_fraction:.0%} of each set's units"
            return {"name": config["config_name"], "sets": sets["train"], "split": share}
        held_out = f"test on {sets['test']}, train on the rest"
        everything = f"{sets['train']}, {sets['test']}"
        return {"name": config["config_name"], "sets": everything, "split": held_out}

    def has_images(rows: datasets.Dataset) -> str:
        if schema.IMAGES not in rows.features:
            return "no"
        return "yes" if rows.num_rows and rows[0][schema.IMAGES] is not None else "no"

    if not with_images:
        imagenet_note = "This copy carries no images; recover them with `milan_hf`."
    elif imagenet_sets and all(has_images(loaded[n]["train"]) == "yes" for n in imagenet_sets):
        imagenet_note = (
            "Images of the ImageNet-sourced sets were recovered from ImageNet validation by "
            "`ids` (torchvision `ImageFolder` order: classes and files sorted by name) with "
            "Resize(256) + CenterCrop(224), as the exemplars were computed."
        )
    else:
        imagenet_note = (
            "ImageNet-sourced sets carry no images here (ImageNet cannot be redistributed): "
            "`milan_hf.load_milannotations(..., imagenet_dir=<ImageNet val>)` recovers them by "
            "`ids`."
        )
    return DatasetCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        repo_id=repo_id,
        default_config=next(c["config_name"] for c in configs if c.get("default")),
        k=len(first[0][schema.IDS]) if first.num_rows else schema.DEFAULT_K,
        mask_size="×".join(map(str, first.features[schema.MASKS].feature.shape)),
        total_units=f"{total:,}",
        total_descriptions=f"{descriptions:,}",
        sets=[
            {"name": n, "units": units[n], "images": has_images(loaded[n]["train"])} for n in loaded
        ],
        configs=[describe(c) for c in configs],
        seed=seed,
        test_fraction=test_fraction,
        with_images=with_images,
        release_host=RELEASE_HOST,
        imagenet_note=imagenet_note,
        citation=CITATION.strip(),
    )


def export_milannotations(
    repo_id: str,
    output_dir: Path,
    sets: Sequence[str] | None = None,
    data_dir: str | None = None,
    imagenet_dir: str | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.1,
    with_images: bool = True,
) -> Path:
    """Write parquet shards and the README card into ``output_dir`` (atomically); return it."""
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"output directory already exists: {output_dir}")
    if sets is None:
        sets = list(discover_milannotations(data_dir)) if data_dir else list(MILANNOTATIONS_SETS)
    loaded = load_sets(sets, data_dir, imagenet_dir, cache_dir, seed, test_fraction, with_images)
    configs = hub_configs(loaded)
    with staged_directory(output_dir) as staging:
        write_parquet(loaded, staging)
        render_card(repo_id, loaded, configs, seed, test_fraction).save(staging / "README.md")
    return output_dir


def push_milannotations(
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    output_dir: str | os.PathLike | None = None,
    **export_options: Any,
) -> str:
    """Export (to ``output_dir`` or a temporary folder) and upload as the dataset ``repo_id``;
    ``export_options`` (``sets``, ``data_dir``, ``seed``...) as in
    :func:`export_milannotations`."""
    with tempfile.TemporaryDirectory() as temporary:
        folder = export_milannotations(
            repo_id,
            Path(output_dir) if output_dir else Path(temporary) / "milannotations",
            **export_options,
        )
        commit = push_dataset_folder(
            folder,
            repo_id,
            private=private,
            token=token,
            commit_message="Upload MILANNOTATIONS as parquet (milan_hf)",
        )
    return str(getattr(commit, "commit_url", commit))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo_id", help="dataset repo on the Hub, e.g. my-org/milannotations")
    parser.add_argument("--sets", nargs="+", help="sets to push (default: all found / released)")
    parser.add_argument("--data-dir", help="folder with <network>/<dataset>/ sets or the zips")
    parser.add_argument("--imagenet-dir", help="ImageNet validation folder (class sub-folders)")
    parser.add_argument("--cache-dir", help="datasets cache for the prepared Arrow files")
    parser.add_argument("--seed", type=int, default=0, help="within-network split seed")
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--no-images", action="store_true", help="push without the images column")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=os.environ.get("HF_TOKEN"))
    parser.add_argument("--output-dir", help="also keep the exported folder here")
    parser.add_argument("--no-push", action="store_true", help="only export (needs --output-dir)")
    args = parser.parse_args(argv)
    options = dict(
        sets=args.sets,
        data_dir=args.data_dir,
        imagenet_dir=args.imagenet_dir,
        cache_dir=args.cache_dir,
        seed=args.seed,
        test_fraction=args.test_fraction,
        with_images=not args.no_images,
    )
    if args.no_push:
        if not args.output_dir:
            parser.error("--no-push needs --output-dir")
        print(export_milannotations(args.repo_id, Path(args.output_dir), **options))
        return 0
    commit_url = push_milannotations(
        args.repo_id,
        private=args.private,
        token=args.token,
        output_dir=args.output_dir,
        **options,
    )
    print(commit_url)
    return 0
