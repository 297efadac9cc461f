"""Publishing datasets to the Hugging Face Hub as parquet shards plus a dataset card.

The folder written here is exactly what ``load_dataset(repo_id)`` reads back (``data/*.parquet``
and a ``README.md`` whose YAML header declares the split), so pushing is one ``upload_folder``.
Descriptions go up with their exemplar sets in one repo (:func:`push_descriptions_to_hub`).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub import HfApi

from . import schema


def write_dataset_folder(
    dataset: datasets.Dataset,
    folder: str | Path,
    card: str,
    *,
    split: str = "train",
    max_rows_per_shard: int = 500,
) -> list[Path]:
    """Write ``dataset`` as ``data/{split}-XXXXX-of-YYYYY.parquet`` shards and ``README.md``."""
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    num_shards = max(1, math.ceil(len(dataset) / max_rows_per_shard))
    paths = []
    for index in range(num_shards):
        shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        path = folder / "data" / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        shard.to_parquet(str(path))
        paths.append(path)
    (folder / "README.md").write_text(card)
    return paths


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload with milan_hf",
) -> Any:
    """Create the ``repo_type`` repo if needed and upload ``folder`` in one commit."""
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=repo_type,
        commit_message=commit_message,
    )


def push_dataset_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload with milan_hf",
) -> Any:
    """Create the dataset repo if needed and upload ``folder`` in one commit."""
    return push_folder(
        folder,
        repo_id,
        repo_type="dataset",
        private=private,
        token=token,
        commit_message=commit_message,
    )


def push_dataset(
    dataset: datasets.Dataset,
    repo_id: str,
    card: str,
    *,
    private: bool = False,
    token: str | None = None,
) -> Any:
    """Write ``dataset`` and its card to a temporary folder and push it."""
    with tempfile.TemporaryDirectory(prefix="milan_hf_push_") as folder:
        write_dataset_folder(dataset, folder, card)
        return push_dataset_folder(folder, repo_id, private=private, token=token)


def push_descriptions_to_hub(
    descriptions: datasets.Dataset,
    exemplars: datasets.Dataset,
    repo_id: str,
    *,
    captioner: str | os.PathLike | None = None,
    private: bool = False,
    token: str | None = None,
) -> Any:
    """Push the descriptions (config ``default``) and the exemplar sets with their images
    materialised (config ``exemplars``) to one dataset repo, with a card from
    ``hub_cards/descriptions.md``."""
    from .exemplars import materialize_images

    if schema.IMAGES not in exemplars.column_names:
        exemplars = materialize_images(exemplars)
    card = descriptions_card(descriptions, exemplars, captioner=captioner)
    with tempfile.TemporaryDirectory(prefix="milan_hf_push_") as folder:
        write_dataset_folder(descriptions, folder, card, split="train")
        write_dataset_folder(exemplars, folder, card, split="exemplars")
        return push_dataset_folder(
            folder,
            repo_id,
            private=private,
            token=token,
            commit_message="Upload MILAN unit descriptions with milan_hf",
        )


def descriptions_card(
    descriptions: datasets.Dataset,
    exemplars: datasets.Dataset,
    *,
    captioner: Any = None,
    examples: int = 10,
) -> str:
    """The dataset card of a descriptions dataset, with a table of example descriptions."""
    from .faithfulness import VERIFICATION_COLUMN_MEANINGS
    from .hub_cards import render_card

    metadata = schema.exemplar_metadata(exemplars)
    source = metadata.get("probe_source", {})
    rows = descriptions.select(range(min(examples, len(descriptions))))
    table = "\n".join(
        f"| `{_markdown_cell(row[schema.LAYER])}` | {row[schema.UNIT]} | "
        f"{_markdown_cell(row[schema.DESCRIPTION])} | {_score_cell(row[schema.SCORE])} |"
        for row in rows
    )
    return render_card(
        "descriptions",
        model=metadata.get("model", "a vision model"),
        num_units=len(descriptions),
        layers=", ".join(f"`{layer}`" for layer in metadata.get("layers", [])),
        method=_method_sentence(descriptions, captioner),
        k=metadata.get("k", schema.DEFAULT_K),
        quantile=metadata.get("quantile", schema.DEFAULT_QUANTILE),
        num_images=metadata.get("num_images", "?"),
        probe_source=source.get("id") or source.get("path") or source.get("kind", "unknown"),
        examples=table,
        verification_rows="".join(
            f"\n  | `{name}` | {meaning} |"
            for name, meaning in VERIFICATION_COLUMN_MEANINGS.items()
            if name in descriptions.column_names
        ),
    )


def _method_sentence(descriptions: datasets.Dataset, captioner: Any) -> str:
    """How the descriptions were made: MILAN's PMI decoding, or Describe-and-Dissect."""
    described_by = ""
    if schema.DESCRIBED_BY in descriptions.column_names and len(descriptions):
        described_by = descriptions[0][schema.DESCRIBED_BY] or ""
    if described_by.startswith("dissect"):
        return (
            "by Describe-and-Dissect (Bai et al., 2024): captions of each exemplar's attention "
            "crop are summarised into candidate concepts, images of each candidate are "
            "generated, and the candidate whose images the unit responds to most is kept "
            f"(`{_markdown_cell(described_by)}`)."
        )
    return (
        "by MILAN (Hernandez et al., ICLR 2022): each unit is described\nby the string that "
        "maximises pointwise mutual information with its exemplar set,\n"
        f"`d* = argmax_d log p(d|E) − λ·log p(d)`, using {_captioner_name(captioner)}."
    )


def _captioner_name(captioner: Any) -> str:
    if captioner is None:
        return "the captioner embedded in milan_hf (trained on the probe-world corpus)"
    if hasattr(captioner, "state_dict"):  # a loaded model
        return f"`{getattr(captioner, 'name_or_path', '') or type(captioner).__name__}`"
    return f"`{captioner}`"


def _score_cell(score: float | None) -> str:
    return "–" if score is None or not math.isfinite(score) else f"{score:.2f}"


def _markdown_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
