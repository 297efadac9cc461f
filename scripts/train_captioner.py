#!/usr/bin/env python
"""Train MILAN's captioner p(d|E) and its prior p(d) on exemplar sets with descriptions.

Input: any exemplar-set dataset (``milan_hf.schema``) with materialised ``images`` and a
``descriptions`` column: a ``datasets`` folder written by ``save_to_disk``, parquet file(s), or
a MILANNOTATIONS-format directory (``--dataset <set or grouping> --data-dir DIR``).

Steps: learn the word vocabulary from the training descriptions; encode every exemplar set
once with the frozen backbone (cached on disk, keyed by data and encoder); train the prior
(early stopping on validation loss) and then the captioner's decoder (early stopping on
validation BLEU, sacrebleu, greedy decoding as in the original); save the captioner with its
prior, tokenizer and processor config in one directory (written atomically), with a model card
rendered from ``hub_cards/captioner.md``; optionally push it to the Hub.

Runs through ``accelerate`` (CPU when no GPU is present)::

    python scripts/train_captioner.py --dataset corpus/ --output-dir milan-captioner \\
        --image-size 64 --hidden-size 256 --embedding-size 64
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Any

import datasets
import sacrebleu
import torch
from accelerate import Accelerator
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from milan_hf import schema
from milan_hf.configuration_milan import MilanCaptionerConfig, MilanPriorConfig
from milan_hf.modeling_milan import MilanCaptionerModel
from milan_hf.processing_milan import MilanProcessor
from milan_hf.staged_output import staged_directory
from milan_hf.tokenization_milan import MilanTokenizer

CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "hub_cards" / "captioner.md"
METRICS_FILE = "training_metrics.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        required=True,
        help="save_to_disk folder, parquet file or "
        "folder, or a MILANNOTATIONS name (with --data-dir)",
    )
    data.add_argument("--data-dir", help="MILANNOTATIONS-format directory of sets")
    data.add_argument("--split", default="train", help="split to train on (default: train)")
    data.add_argument("--validation-fraction", type=float, default=0.1)
    data.add_argument("--min-word-frequency", type=int, default=1)
    data.add_argument(
        "--feature-cache-dir",
        default=None,
        help="where encoded exemplar features are cached (default: ~/.cache/milan_hf/features)",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--init-from", help="start from this captioner (directory or Hub id)")
    model.add_argument("--backbone", default="tf_efficientnet_lite0")
    model.add_argument(
        "--no-pretrained-backbone", action="store_true", help="random backbone weights (tests only)"
    )
    model.add_argument(
        "--backbone-out-indices",
        type=int,
        nargs="+",
        help="feature stages to pool (default: all); fewer stages give a smaller model",
    )
    model.add_argument(
        "--exclude-backbone-weights",
        action="store_true",
        help="leave the frozen pretrained backbone out of the checkpoint (reloaded from its "
        "source by from_pretrained): a few MB instead of ~15 for the default backbone",
    )
    model.add_argument("--image-size", type=int, default=224)
    model.add_argument("--embedding-size", type=int, default=128)
    model.add_argument("--hidden-size", type=int, default=512)
    model.add_argument("--dropout", type=float, default=0.5)
    model.add_argument("--prior-layers", type=int, default=2)
    training = parser.add_argument_group("training")
    training.add_argument("--batch-size", type=int, default=64)
    training.add_argument("--learning-rate", type=float, default=1e-3)
    training.add_argument("--max-epochs", type=int, default=100)
    training.add_argument("--patience", type=int, default=4)
    training.add_argument("--prior-max-epochs", type=int, default=100)
    training.add_argument("--prior-patience", type=int, default=4)
    training.add_argument("--encode-batch-size", type=int, default=8, help="units per encoder pass")
    training.add_argument("--seed", type=int, default=0)
    training.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's); 1 is often fastest on a busy shared CPU",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", required=True)
    output.add_argument("--overwrite", action="store_true")
    output.add_argument("--push-to-hub", metavar="REPO", help="upload the result to this repo")
    output.add_argument("--private", action="store_true")
    output.add_argument("--dataset-name", help="name of the training data on the model card")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def load_exemplar_dataset(source: str, data_dir: str | None, split: str) -> datasets.Dataset:
    """An exemplar-set dataset with descriptions from a ``save_to_disk`` folder, parquet, or
    MILANNOTATIONS-format data."""
    path = Path(source)
    if data_dir is not None:
        from milan_hf.milannotations import load_milannotations

        dataset = load_milannotations(source, data_dir=data_dir, split=split)
    elif path.is_dir() and any(
        (path / name).exists() for name in ("state.json", "dataset_dict.json")
    ):
        dataset = datasets.load_from_disk(str(path))
    elif path.is_dir() and any(path.rglob("*.parquet")):
        dataset = datasets.Dataset.from_parquet(sorted(str(p) for p in path.rglob("*.parquet")))
    elif path.is_file() and path.suffix == ".parquet":
        dataset = datasets.Dataset.from_parquet(str(path))
    else:
        raise FileNotFoundError(
            f"Cannot read an exemplar-set dataset from {source!r}: expected a save_to_disk "
            "folder, parquet file(s), or a MILANNOTATIONS name with --data-dir."
        )
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"Split {split!r} not in {source!r}; it has {list(dataset)}.")
        dataset = dataset[split]
    for column in (schema.IMAGES, schema.MASKS, schema.DESCRIPTIONS):
        if column not in dataset.column_names:
            raise ValueError(
                f"Dataset {source!r} lacks the {column!r} column (has {dataset.column_names})."
            )
    return dataset


def split_units(count: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Random train/validation split of unit rows (at least one validation unit)."""
    if count < 2:
        raise ValueError(f"Need at least 2 units to train and validate, got {count}.")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    validation_count = min(count - 1, max(1, round(validation_fraction * count)))
    return sorted(order[validation_count:]), sorted(order[:validation_count])


def encode_exemplar_sets(
    model: MilanCaptionerModel,
    processor: MilanProcessor,
    dataset: datasets.Dataset,
    cache_dir: Path,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask-pooled features (units, k, F) and exemplar mask (units, k) of every row, computed
    once with the frozen encoder and cached on disk under a key of data and encoder."""
    backbone_digest = hashlib.sha256()
    for tensor in model.encoder.state_dict().values():
        backbone_digest.update(tensor.detach().cpu().numpy().tobytes())
    key_parts = {
        "dataset": dataset._fingerprint,
        "backbone": backbone_digest.hexdigest(),
        "processor": processor.to_dict(),
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    cache_file = cache_dir / f"exemplar-features-{key}.safetensors"
    if cache_file.exists():
        cached = load_file(str(cache_file))
        return cached["features"], cached["exemplar_mask"].bool()

    model.encoder.to(device)
    rows = dataset.select_columns([schema.IMAGES, schema.MASKS, schema.LAYER, schema.UNIT])
    feature_batches, mask_batches = [], []
    for start in tqdm(range(0, len(rows), batch_size), desc="encode exemplar sets"):
        batch = [rows[index] for index in range(start, min(start + batch_size, len(rows)))]
        inputs = processor(batch)
        features = model.encode_exemplars(
            inputs["pixel_values"].to(device), inputs["masks"].to(device)
        )
        feature_batches.append(features.cpu())
        mask_batches.append(inputs["exemplar_mask"])
    k = max(batch.shape[1] for batch in feature_batches)
    features = torch.cat([_pad_exemplars(batch, k) for batch in feature_batches])
    exemplar_mask = torch.cat([_pad_exemplars(batch, k) for batch in mask_batches])

    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = cache_file.with_suffix(f".tmp-{os.getpid()}")
    save_file(
        {"features": features, "exemplar_mask": exemplar_mask.to(torch.uint8)}, str(temporary)
    )
    os.replace(temporary, cache_file)
    return features, exemplar_mask


def _pad_exemplars(batch: torch.Tensor, k: int) -> torch.Tensor:
    padding = [0, 0] * (batch.ndim - 2) + [0, k - batch.shape[1]]
    return torch.nn.functional.pad(batch, padding)


def tokenize(
    tokenizer: MilanTokenizer, texts: Sequence[str], max_tokens: int
) -> list[torch.Tensor]:
    """``<bos> words <eos>`` ids per text, words truncated to ``max_tokens`` - 1."""
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [torch.tensor([bos, *ids[: max_tokens - 1], eos]) for ids in encoded]


def collate_descriptions(pad_id: int):
    def collate(items: list[tuple[int, torch.Tensor]]) -> dict[str, torch.Tensor]:
        units = torch.tensor([unit for unit, _ in items])
        ids = pad_sequence([ids for _, ids in items], batch_first=True, padding_value=pad_id)
        return {"units": units, "input_ids": ids}

    return collate


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


class EarlyStopping:
    """Tracks the best score; ``should_stop`` after ``patience`` epochs without improvement.

    Scores are tuples compared lexicographically (higher is better), e.g. (BLEU, −loss): on
    tiny or early data BLEU is often tied at 0, and the loss then decides.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best: tuple[float, ...] | None = None
        self.epochs_without_improvement = 0

    def update(self, score: tuple[float, ...]) -> bool:
        """Record ``score``; returns whether it is the best so far."""
        improved = self.best is None or score > self.best
        if improved:
            self.best, self.epochs_without_improvement = score, 0
        else:
            self.epochs_without_improvement += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.epochs_without_improvement >= self.patience


def train_prior(
    model: MilanCaptionerModel,
    train_ids: list[torch.Tensor],
    validation_ids: list[torch.Tensor],
    args: argparse.Namespace,
    accelerator: Accelerator,
) -> list[dict[str, float]]:
    """Fit ``model.prior`` on the training descriptions; keep the best validation loss."""
    prior = model.prior
    pad_id = prior.config.pad_token_id
    collate = collate_descriptions(pad_id)
    train_loader = torch.utils.data.DataLoader(
        list(enumerate(train_ids)), batch_size=args.batch_size, shuffle=True, collate_fn=collate
    )
    validation_loader = torch.utils.data.DataLoader(
        list(enumerate(validation_ids)), batch_size=args.batch_size, collate_fn=collate
    )
    optimizer = torch.optim.AdamW(prior.parameters(), lr=args.learning_rate)
    prepared, optimizer, train_loader, validation_loader = accelerator.prepare(
        prior, optimizer, train_loader, validation_loader
    )
    stopper = EarlyStopping(args.prior_patience)
    best_state, history = None, []
    progress = tqdm(
        range(args.prior_max_epochs), desc="train prior", disable=not accelerator.is_main_process
    )
    for epoch in progress:
        prepared.train()
        train_loss = _run_epoch(prepared, train_loader, accelerator, optimizer, prior_inputs=True)
        prepared.eval()
        with torch.no_grad():
            validation_loss = _run_epoch(
                prepared, validation_loader, accelerator, None, prior_inputs=True
            )
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "validation_loss": validation_loss}
        )
        progress.set_postfix(
            train_loss=f"{train_loss:.3f}", validation_loss=f"{validation_loss:.3f}"
        )
        if stopper.update((-validation_loss,)):
            best_state = {
                k: v.detach().clone()
                for k, v in accelerator.unwrap_model(prepared).state_dict().items()
            }
        if stopper.should_stop:
            break
    prior.load_state_dict(best_state)
    prior.eval()
    return history


def _run_epoch(
    model, loader, accelerator, optimizer, prior_inputs=False, features=None, exemplar_mask=None
):
    """Mean loss over ``loader``; one optimiser step per batch when ``optimizer`` is given."""
    total, batches = 0.0, 0
    for batch in loader:
        ids = batch["input_ids"]
        if prior_inputs:
            loss = model(input_ids=ids, labels=ids).loss
        else:
            units = batch["units"].cpu()
            loss = model(
                exemplar_features=features[units].to(ids.device),
                exemplar_mask=exemplar_mask[units].to(ids.device),
                input_ids=ids,
                labels=ids,
            ).loss
        if optimizer is not None:
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        total += accelerator.gather_for_metrics(loss.detach().reshape(1)).mean().item()
        batches += 1
    return total / max(batches, 1)


def corpus_bleu(
    model: MilanCaptionerModel,
    tokenizer: MilanTokenizer,
    features: torch.Tensor,
    exemplar_mask: torch.Tensor,
    references: list[list[str]],
    batch_size: int,
    num_beams: int = 1,
) -> tuple[float, list[str]]:
    """sacrebleu corpus BLEU of p(d|E) decoding (greedy by default, as the original) against
    each unit's descriptions."""
    device = next(model.parameters()).device
    hypotheses = []
    for start in range(0, len(features), batch_size):
        output = model.generate(
            exemplar_features=features[start : start + batch_size].to(device),
            exemplar_mask=exemplar_mask[start : start + batch_size].to(device),
            pmi_weight=0.0,
            num_beams=num_beams,
            no_repeat_ngram_size=0,  # the original decoding
        )
        hypotheses.extend(tokenizer.batch_decode(output.sequences, skip_special_tokens=True))
    # sacrebleu wants one stream per reference slot; units with fewer descriptions repeat
    # their first (a duplicate reference does not change BLEU).
    slots = max(len(texts) for texts in references)
    streams = [[texts[min(i, len(texts) - 1)] for texts in references] for i in range(slots)]
    # effective_order: descriptions are short, and n-gram orders nobody reaches are skipped
    # rather than zeroing the score.
    bleu = sacrebleu.BLEU(effective_order=True).corpus_score(hypotheses, streams)
    return bleu.score, hypotheses


def train_captioner(
    model: MilanCaptionerModel,
    tokenizer: MilanTokenizer,
    features: torch.Tensor,
    exemplar_mask: torch.Tensor,
    descriptions: list[list[str]],
    train_units: list[int],
    validation_units: list[int],
    args: argparse.Namespace,
    accelerator: Accelerator,
) -> list[dict[str, float]]:
    """Fit the decoder on (unit, description) pairs from cached features; keep the best
    validation BLEU."""
    max_tokens = model.config.max_description_length
    pairs = {
        name: [
            (unit, ids)
            for unit in units
            for ids in tokenize(tokenizer, descriptions[unit], max_tokens)
        ]
        for name, units in (("train", train_units), ("validation", validation_units))
    }
    collate = collate_descriptions(tokenizer.pad_token_id)
    train_loader = torch.utils.data.DataLoader(
        pairs["train"], batch_size=args.batch_size, shuffle=True, collate_fn=collate
    )
    validation_loader = torch.utils.data.DataLoader(
        pairs["validation"], batch_size=args.batch_size, collate_fn=collate
    )
    # Only the decoder learns: the backbone is frozen and the prior is trained separately.
    if model.prior is not None:
        model.prior.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate)
    prepared, optimizer, train_loader, validation_loader = accelerator.prepare(
        model, optimizer, train_loader, validation_loader
    )
    unwrapped = accelerator.unwrap_model(prepared)
    stopper = EarlyStopping(args.patience)
    best_state, history = None, []
    progress = tqdm(
        range(args.max_epochs), desc="train captioner", disable=not accelerator.is_main_process
    )
    for epoch in progress:
        prepared.train()
        train_loss = _run_epoch(
            prepared, train_loader, accelerator, optimizer, False, features, exemplar_mask
        )
        prepared.eval()
        with torch.no_grad():
            validation_loss = _run_epoch(
                prepared, validation_loader, accelerator, None, False, features, exemplar_mask
            )
        bleu, _ = corpus_bleu(
            unwrapped,
            tokenizer,
            features[validation_units],
            exemplar_mask[validation_units],
            [descriptions[unit] for unit in validation_units],
            args.batch_size,
        )
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "validation_loss": validation_loss,
                "validation_bleu": bleu,
            }
        )
        progress.set_postfix(
            train_loss=f"{train_loss:.3f}",
            validation_loss=f"{validation_loss:.3f}",
            bleu=f"{bleu:.1f}",
        )
        if stopper.update((bleu, -validation_loss)):
            best_state = {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}
        if stopper.should_stop:
            break
    model.load_state_dict(best_state)
    if model.prior is not None:
        model.prior.requires_grad_(True)
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------
# Saving and publishing
# ---------------------------------------------------------------------------------------------


def render_model_card(fields: dict[str, Any]) -> str:
    """The model card: ``hub_cards/captioner.md`` with its ``$field`` placeholders filled."""
    try:
        from milan_hf.hub_cards import render_card
    except ImportError:  # running from a checkout where hub_cards is not installed as a package
        return Template(CARD_TEMPLATE.read_text()).substitute(
            {k: str(v) for k, v in fields.items()}
        )
    return render_card("captioner", **fields)


def save_atomically(
    model: MilanCaptionerModel,
    processor: MilanProcessor,
    output_dir: Path,
    metrics: dict[str, Any],
    card: str,
    overwrite: bool,
) -> None:
    """Write model, prior, tokenizer, processor config, metrics and card to a temporary folder
    beside ``output_dir``, then move it into place: an interrupted run leaves nothing that
    loads as complete."""
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it.")
    with staged_directory(output_dir) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        (staging / "README.md").write_text(card)


def push_to_hub(folder: Path, repo_id: str, private: bool = False, token: str | None = None) -> Any:
    """Create the model repo if needed and upload the trained folder in one commit."""
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message="Upload MILAN captioner trained with milan_hf",
    )


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def build_model(args: argparse.Namespace, tokenizer: MilanTokenizer) -> MilanCaptionerModel:
    if args.init_from:
        model = MilanCaptionerModel.from_pretrained(args.init_from)
        if model.config.vocab_size != len(tokenizer):
            raise ValueError(
                f"--init-from {args.init_from!r} has a vocabulary of {model.config.vocab_size} "
                f"tokens but the training data gives {len(tokenizer)}; train from scratch."
            )
        return model
    prior_config = MilanPriorConfig(
        vocab_size=len(tokenizer),
        embedding_size=args.embedding_size,
        hidden_size=args.hidden_size,
        num_layers=args.prior_layers,
        dropout=args.dropout,
    )
    config = MilanCaptionerConfig(
        vocab_size=len(tokenizer),
        backbone=args.backbone,
        backbone_pretrained=not args.no_pretrained_backbone,
        backbone_out_indices=args.backbone_out_indices,
        save_backbone_weights=not args.exclude_backbone_weights,
        image_size=args.image_size,
        embedding_size=args.embedding_size,
        hidden_size=args.hidden_size,
        dropout=args.dropout,
        prior_config=prior_config,
    )
    return MilanCaptionerModel(config)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not args.overwrite:
        raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it.")

    dataset = load_exemplar_dataset(args.dataset, args.data_dir, args.split)
    descriptions = [list(texts) for texts in dataset[schema.DESCRIPTIONS]]
    empty = [index for index, texts in enumerate(descriptions) if not texts]
    if empty:
        raise ValueError(f"Rows {empty[:10]} of {args.dataset!r} have no descriptions.")
    train_units, validation_units = split_units(len(dataset), args.validation_fraction, args.seed)

    tokenizer = MilanTokenizer.from_descriptions(
        (text for unit in train_units for text in descriptions[unit]),
        min_frequency=args.min_word_frequency,
    )
    model = build_model(args, tokenizer)
    processor = MilanProcessor.from_model_config(model.config, tokenizer)

    cache_dir = Path(args.feature_cache_dir or Path.home() / ".cache" / "milan_hf" / "features")
    features, exemplar_mask = encode_exemplar_sets(
        model, processor, dataset, cache_dir, args.encode_batch_size, accelerator.device
    )

    max_tokens = model.config.max_description_length
    prior_history = train_prior(
        model,
        tokenize(tokenizer, [t for u in train_units for t in descriptions[u]], max_tokens),
        tokenize(tokenizer, [t for u in validation_units for t in descriptions[u]], max_tokens),
        args,
        accelerator,
    )
    captioner_history = train_captioner(
        model,
        tokenizer,
        features,
        exemplar_mask,
        descriptions,
        train_units,
        validation_units,
        args,
        accelerator,
    )
    model.to("cpu")

    best = max(
        captioner_history, key=lambda entry: (entry["validation_bleu"], -entry["validation_loss"])
    )
    metrics = {
        "train_units": len(train_units),
        "validation_units": len(validation_units),
        "train_descriptions": sum(len(descriptions[u]) for u in train_units),
        "vocabulary_size": len(tokenizer),
        "validation_bleu": best["validation_bleu"],
        "validation_loss": best["validation_loss"],
        "prior_validation_loss": min(entry["validation_loss"] for entry in prior_history),
        "captioner_history": captioner_history,
        "prior_history": prior_history,
    }
    parameters = sum(p.numel() for p in model.parameters())
    card = render_model_card(
        {
            "repo_id": args.push_to_hub or output_dir.name,
            "dataset_name": args.dataset_name or Path(args.dataset).name or args.dataset,
            "backbone": model.config.backbone,
            "image_size": model.config.image_size,
            "feature_size": model.config.feature_size,
            "embedding_size": model.config.embedding_size,
            "hidden_size": model.config.hidden_size,
            "prior_layers": model.config.prior_config.num_layers,
            "parameters": f"{parameters / 1e6:.2f}M",
            "vocabulary_size": len(tokenizer),
            "train_units": metrics["train_units"],
            "validation_units": metrics["validation_units"],
            "train_descriptions": metrics["train_descriptions"],
            "validation_bleu": f"{metrics['validation_bleu']:.2f}",
            "validation_loss": f"{metrics['validation_loss']:.3f}",
            "prior_validation_loss": f"{metrics['prior_validation_loss']:.3f}",
            "epochs": len(captioner_history),
            "pmi_weight": model.generation_config.pmi_weight,
            "beam_size": model.generation_config.num_beams,
        }
    )
    if accelerator.is_main_process:
        save_atomically(model, processor, output_dir, metrics, card, args.overwrite)
        if args.push_to_hub:
            push_to_hub(output_dir, args.push_to_hub, private=args.private)
        print(
            f"Saved to {output_dir}: validation BLEU {metrics['validation_bleu']:.2f}, "
            f"validation loss {metrics['validation_loss']:.3f}, "
            f"prior validation loss {metrics['prior_validation_loss']:.3f}"
        )
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"train_captioner: error: {error}", file=sys.stderr)
        sys.exit(2)
