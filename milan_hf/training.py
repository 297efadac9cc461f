"""Training MILAN's captioner p(d|E) and its prior p(d) on exemplar sets with descriptions.

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

    milan-hf train --dataset corpus/ --output-dir milan-captioner \\
        --image-size 64 --hidden-size 256 --embedding-size 64

(``scripts/train_captioner.py`` takes the same options). :func:`train` runs the whole recipe
from parsed options (:mod:`milan_hf.commands.train`); :func:`main` parses them first. The
embedded captioner's recipe (:mod:`milan_hf.embedded_training`) builds on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import datasets
import sacrebleu
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from milan_hf import schema
from milan_hf.configuration_milan import MilanCaptionerConfig, MilanPriorConfig
from milan_hf.hub import push_folder
from milan_hf.modeling_milan import MilanCaptionerModel, NoRepeatWordsLogitsProcessor
from milan_hf.processing_milan import MilanProcessor
from milan_hf.staged_output import require_own_output, staged_directory
from milan_hf.tokenization_milan import MilanTokenizer

CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "hub_cards" / "captioner.md"
METRICS_FILE = "training_metrics.json"
#: What a trained captioner's folder holds (config, weights, tokenizer, metrics, card):
#: replacing a folder with anything else in it is refused.
OWNED_OUTPUT = ("*.json", "*.safetensors", "README.md")
#: Inside a feature-cache entry (a directory, staged so that no reader sees half a file).
FEATURES_FILE = "features.safetensors"


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
    once with the frozen encoder and cached on disk under a key of data and encoder (one staged
    directory per key, so an interrupted run leaves no half-written entry)."""
    backbone_digest = hashlib.sha256()
    for tensor in model.encoder.state_dict().values():
        backbone_digest.update(tensor.detach().cpu().numpy().tobytes())
    key_parts = {
        "dataset": dataset._fingerprint,
        "backbone": backbone_digest.hexdigest(),
        "processor": processor.to_dict(),
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    cache_entry = cache_dir / f"exemplar-features-{key}"
    if (cache_entry / FEATURES_FILE).exists():
        cached = load_file(str(cache_entry / FEATURES_FILE))
        return cached["features"], cached["exemplar_mask"].bool()
    features, exemplar_mask = _encode(model, processor, dataset, batch_size, device)
    with staged_directory(cache_entry) as staging:
        tensors = {"features": features, "exemplar_mask": exemplar_mask.to(torch.uint8)}
        save_file(tensors, str(staging / FEATURES_FILE))
    return features, exemplar_mask


def _encode(
    model: MilanCaptionerModel,
    processor: MilanProcessor,
    dataset: datasets.Dataset,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
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
    return features, torch.cat([_pad_exemplars(batch, k) for batch in mask_batches])


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


@dataclass(frozen=True)
class Schedule:
    """How one model is fitted: batches, step size, and when to stop."""

    batch_size: int
    learning_rate: float
    max_epochs: int
    patience: int


def _fit(
    prepared: torch.nn.Module,
    loaders: tuple[Any, Any],
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    schedule: Schedule,
    description: str,
    score: Callable[[int, float, float], dict[str, float]],
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    """Epochs of training until ``schedule.patience`` epochs bring no better score.

    ``score(epoch, train_loss, validation_loss)`` returns the epoch's history entry; its
    ``"score"`` (a tuple, higher is better) decides, and is left out of the history. Returns
    the history and the best epoch's state dict.
    """
    train_loader, validation_loader = loaders
    stopper = EarlyStopping(schedule.patience)
    best_state, history = None, []
    epochs = tqdm(
        range(schedule.max_epochs), desc=description, disable=not accelerator.is_main_process
    )
    for epoch in epochs:
        prepared.train()
        train_loss = _run_epoch(prepared, train_loader, accelerator, optimizer)
        prepared.eval()
        with torch.no_grad():
            validation_loss = _run_epoch(prepared, validation_loader, accelerator, None)
        entry = score(epoch, train_loss, validation_loss)
        epoch_score = entry.pop("score")
        history.append(entry)
        epochs.set_postfix({key: f"{value:.3f}" for key, value in entry.items() if key != "epoch"})
        if stopper.update(epoch_score):
            unwrapped = accelerator.unwrap_model(prepared)
            best_state = {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}
        if stopper.should_stop:
            break
    return history, best_state


def _loaders(
    train_items: list, validation_items: list, batch_size: int, pad_id: int
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    collate = collate_descriptions(pad_id)
    return (
        torch.utils.data.DataLoader(
            train_items, batch_size=batch_size, shuffle=True, collate_fn=collate
        ),
        torch.utils.data.DataLoader(validation_items, batch_size=batch_size, collate_fn=collate),
    )


class _PriorOnDescriptions(torch.nn.Module):
    """The prior as a model of (unit, ids) batches, like the captioner: one epoch loop fits both."""

    def __init__(self, prior: torch.nn.Module):
        super().__init__()
        self.prior = prior

    def forward(self, units: torch.Tensor, input_ids: torch.Tensor):
        return self.prior(input_ids=input_ids, labels=input_ids)


def train_prior(
    model: MilanCaptionerModel,
    train_ids: list[torch.Tensor],
    validation_ids: list[torch.Tensor],
    schedule: Schedule,
    accelerator: Accelerator,
) -> list[dict[str, float]]:
    """Fit ``model.prior`` on the training descriptions; keep the best validation loss."""
    prior = model.prior
    loaders = _loaders(
        list(enumerate(train_ids)),
        list(enumerate(validation_ids)),
        schedule.batch_size,
        prior.config.pad_token_id,
    )
    optimizer = torch.optim.AdamW(prior.parameters(), lr=schedule.learning_rate)
    prepared, optimizer, *loaders = accelerator.prepare(
        _PriorOnDescriptions(prior), optimizer, *loaders
    )

    def score(epoch: int, train_loss: float, validation_loss: float) -> dict[str, Any]:
        entry = {"epoch": epoch, "train_loss": train_loss, "validation_loss": validation_loss}
        return {**entry, "score": (-validation_loss,)}

    history, best_state = _fit(
        prepared, loaders, optimizer, accelerator, schedule, "train prior", score
    )
    accelerator.unwrap_model(prepared).load_state_dict(best_state)
    prior.eval()
    return history


def _run_epoch(model, loader, accelerator, optimizer) -> float:
    """Mean loss over ``loader``; one optimiser step per batch when ``optimizer`` is given."""
    total, batches = 0.0, 0
    for batch in loader:
        loss = model(units=batch["units"], input_ids=batch["input_ids"]).loss
        if optimizer is not None:
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        total += accelerator.gather_for_metrics(loss.detach().reshape(1)).mean().item()
        batches += 1
    return total / max(batches, 1)


class _CaptionerOnCachedFeatures(torch.nn.Module):
    """The captioner fed (unit, ids) batches: each unit's exemplar features from the cache."""

    def __init__(
        self, captioner: MilanCaptionerModel, features: torch.Tensor, exemplar_mask: torch.Tensor
    ):
        super().__init__()
        self.captioner = captioner
        self.features, self.exemplar_mask = features, exemplar_mask

    def forward(self, units: torch.Tensor, input_ids: torch.Tensor):
        units = units.cpu()
        return self.captioner(
            exemplar_features=self.features[units].to(input_ids.device),
            exemplar_mask=self.exemplar_mask[units].to(input_ids.device),
            input_ids=input_ids,
            labels=input_ids,
        )


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
            no_repeat_words=False,
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
    units: tuple[list[int], list[int]],
    schedule: Schedule,
    accelerator: Accelerator,
) -> list[dict[str, float]]:
    """Fit the decoder on (unit, description) pairs from cached features (``units``: the train
    and validation unit indices); keep the best validation BLEU, then loss."""
    max_tokens = model.config.max_description_length
    train_units, validation_units = units
    pairs = [
        [
            (unit, ids)
            for unit in chosen
            for ids in tokenize(tokenizer, descriptions[unit], max_tokens)
        ]
        for chosen in (train_units, validation_units)
    ]
    loaders = _loaders(*pairs, schedule.batch_size, tokenizer.pad_token_id)
    # Only the decoder learns: the backbone is frozen and the prior is trained separately.
    if model.prior is not None:
        model.prior.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=schedule.learning_rate)
    prepared, optimizer, *loaders = accelerator.prepare(
        _CaptionerOnCachedFeatures(model, features, exemplar_mask), optimizer, *loaders
    )
    unwrapped = accelerator.unwrap_model(prepared).captioner

    def score(epoch: int, train_loss: float, validation_loss: float) -> dict[str, Any]:
        bleu, _ = corpus_bleu(
            unwrapped,
            tokenizer,
            features[validation_units],
            exemplar_mask[validation_units],
            [descriptions[unit] for unit in validation_units],
            schedule.batch_size,
        )
        entry = {"epoch": epoch, "train_loss": train_loss, "validation_loss": validation_loss}
        return {**entry, "validation_bleu": bleu, "score": (bleu, -validation_loss)}

    history, best_state = _fit(
        prepared, loaders, optimizer, accelerator, schedule, "train captioner", score
    )
    accelerator.unwrap_model(prepared).load_state_dict(best_state)
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
    require_own_output(
        output_dir, metadata_file=METRICS_FILE, owned=OWNED_OUTPUT, what="--output-dir"
    )
    with staged_directory(output_dir) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        (staging / "README.md").write_text(card)


def push_to_hub(folder: Path, repo_id: str, private: bool = False, token: str | None = None) -> Any:
    """Create the model repo if needed and upload the trained folder in one commit."""
    return push_folder(
        folder,
        repo_id,
        repo_type="model",
        private=private,
        token=token,
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


def _read_descriptions(args: argparse.Namespace) -> tuple[datasets.Dataset, list[list[str]]]:
    dataset = load_exemplar_dataset(args.dataset, args.data_dir, args.split)
    descriptions = [list(texts) for texts in dataset[schema.DESCRIPTIONS]]
    empty = [index for index, texts in enumerate(descriptions) if not texts]
    if empty:
        raise ValueError(f"Rows {empty[:10]} of {args.dataset!r} have no descriptions.")
    return dataset, descriptions


def train(args: argparse.Namespace) -> dict[str, Any]:
    """The whole recipe from ``milan-hf train``'s options (:mod:`milan_hf.commands.train`):
    vocabulary, feature cache, prior, captioner, card, atomic save, optional push. Returns the
    training metrics (also saved as ``training_metrics.json``)."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not args.overwrite:
        raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it.")

    dataset, descriptions = _read_descriptions(args)
    units = split_units(len(dataset), args.validation_fraction, args.seed)
    tokenizer = MilanTokenizer.from_descriptions(
        (text for unit in units[0] for text in descriptions[unit]),
        min_frequency=args.min_word_frequency,
    )
    model = build_model(args, tokenizer)
    # The text-free model learns which token ids are function words (no_repeat_words needs it).
    model.generation_config.word_roles = NoRepeatWordsLogitsProcessor.word_roles(tokenizer)
    processor = MilanProcessor.from_model_config(model.config, tokenizer)

    cache_dir = Path(args.feature_cache_dir or Path.home() / ".cache" / "milan_hf" / "features")
    features, exemplar_mask = encode_exemplar_sets(
        model, processor, dataset, cache_dir, args.encode_batch_size, accelerator.device
    )
    max_tokens = model.config.max_description_length
    prior_ids = [
        tokenize(tokenizer, [text for unit in chosen for text in descriptions[unit]], max_tokens)
        for chosen in units
    ]
    prior_schedule = Schedule(
        args.batch_size, args.learning_rate, args.prior_max_epochs, args.prior_patience
    )
    prior_history = train_prior(model, *prior_ids, prior_schedule, accelerator)
    schedule = Schedule(args.batch_size, args.learning_rate, args.max_epochs, args.patience)
    captioner_history = train_captioner(
        model, tokenizer, features, exemplar_mask, descriptions, units, schedule, accelerator
    )
    model.to("cpu")
    metrics = training_metrics(units, descriptions, tokenizer, prior_history, captioner_history)
    if accelerator.is_main_process:
        card = render_model_card(_card_fields(args, model, metrics))
        save_atomically(model, processor, output_dir, metrics, card, args.overwrite)
        if args.push_to_hub:
            push_to_hub(output_dir, args.push_to_hub, private=args.private)
        print(
            f"Saved to {output_dir}: validation BLEU {metrics['validation_bleu']:.2f}, "
            f"validation loss {metrics['validation_loss']:.3f}, "
            f"prior validation loss {metrics['prior_validation_loss']:.3f}"
        )
    return metrics


def training_metrics(
    units: tuple[list[int], list[int]],
    descriptions: list[list[str]],
    tokenizer: MilanTokenizer,
    prior_history: list[dict[str, float]],
    captioner_history: list[dict[str, float]],
) -> dict[str, Any]:
    """What ``training_metrics.json`` records: data sizes, the best epoch, both histories."""
    best = max(
        captioner_history, key=lambda entry: (entry["validation_bleu"], -entry["validation_loss"])
    )
    train_units, validation_units = units
    return {
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


def _card_fields(
    args: argparse.Namespace, model: MilanCaptionerModel, metrics: dict[str, Any]
) -> dict[str, Any]:
    return {
        "repo_id": args.push_to_hub or Path(args.output_dir).name,
        "dataset_name": args.dataset_name or Path(args.dataset).name or args.dataset,
        **trained_captioner_card_fields(model, metrics),
        "vocabulary_size": metrics["vocabulary_size"],
    }


def trained_captioner_card_fields(
    model: MilanCaptionerModel, metrics: dict[str, Any]
) -> dict[str, Any]:
    """The model-card fields every trained captioner has: its architecture, how its training
    went (``metrics`` as :func:`training_metrics` gives them) and its decoding defaults."""
    config = model.config
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "backbone": config.backbone,
        "image_size": config.image_size,
        "feature_size": config.feature_size,
        "embedding_size": config.embedding_size,
        "hidden_size": config.hidden_size,
        "prior_layers": config.prior_config.num_layers,
        "parameters": f"{parameters / 1e6:.2f}M",
        "train_units": metrics["train_units"],
        "validation_units": metrics["validation_units"],
        "train_descriptions": metrics["train_descriptions"],
        "validation_bleu": f"{metrics['validation_bleu']:.2f}",
        "validation_loss": f"{metrics['validation_loss']:.3f}",
        "prior_validation_loss": f"{metrics['prior_validation_loss']:.3f}",
        "epochs": len(metrics["captioner_history"]),
        "pmi_weight": model.generation_config.pmi_weight,
        "beam_size": model.generation_config.num_beams,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`train` with options parsed from ``argv`` as ``milan-hf train`` parses them."""
    from milan_hf.commands.train import parse_args

    return train(parse_args(argv))
