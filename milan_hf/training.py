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
from functools import lru_cache
from itertools import islice
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
    key_parts = {
        "dataset": dataset._fingerprint,
        "backbone": encoder_digest(model),
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
    from milan_hf.inference import encode_exemplar_sets as encode_distinct_images

    model.encoder.to(device)
    # Each distinct image through the backbone once (units share their probe images).
    encoded = encode_distinct_images(
        dataset, model, processor, images_per_pass=max(batch_size, 16), progress=True
    )
    return encoded["exemplar_features"].cpu(), encoded["exemplar_mask"].cpu()


def encoder_digest(model: MilanCaptionerModel) -> str:
    """A hash of the frozen encoder's weights, location grid and context pooling (keys the
    feature caches)."""
    settings = f"grid={model.config.mask_location_grid}"
    if getattr(model.config, "mask_context_pooling", False):
        settings += ";context=1"
    if getattr(model.config, "mask_below_context", False):
        settings += ";below=1"
    digest = hashlib.sha256(settings.encode())
    for tensor in model.encoder.state_dict().values():
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _pad_exemplars(batch: torch.Tensor, k: int) -> torch.Tensor:
    padding = [0, 0] * (batch.ndim - 2) + [0, k - batch.shape[1]]
    return torch.nn.functional.pad(batch, padding)


# ---------------------------------------------------------------------------------------------
# Synthetic units of known meaning (milan_hf.probe_world.synthetic_units)
# ---------------------------------------------------------------------------------------------

SYNTHETIC_UNITS_FILE = "units.json"


@dataclass
class SyntheticFeatures:
    """Encoded synthetic units: features (units, k, F) in float16, their exemplar mask, the
    three descriptions and the concept expression (``expression_text``) of each unit."""

    features: torch.Tensor
    exemplar_mask: torch.Tensor
    descriptions: list[list[str]]
    concepts: list[str]


def require_training_seed(seed: int, what: str = "--synthetic-seed") -> None:
    """Refuse synthetic seeds from the benchmark's range (``BENCHMARK_SEED`` and above)."""
    from milan_hf.probe_world.synthetic_units import BENCHMARK_SEED

    if not 0 <= seed < BENCHMARK_SEED:
        raise ValueError(
            f"{what} {seed} is not a training seed: seeds from {BENCHMARK_SEED} on are the "
            "benchmark's held-out units, and seeds are non-negative."
        )


def encode_synthetic_units(
    model: MilanCaptionerModel,
    processor: MilanProcessor,
    seed: int,
    num_units: int,
    settings: Any,
    cache_dir: Path,
    description: str = "synthetic units",
) -> SyntheticFeatures:
    """Synthetic units ``0..num_units-1`` of ``seed``, encoded block by block (a block's units
    share their scenes: each distinct image through the backbone once). Each block is cached
    in its own staged directory keyed by seed, block, settings, the synthetic-unit code
    version and the encoder, so an interrupted run keeps the blocks it finished."""
    from dataclasses import asdict

    from milan_hf.probe_world.synthetic_units import code_version

    require_training_seed(seed)
    block_size = settings.units_per_block
    common = {
        "seed": seed,
        "settings": asdict(settings),
        "code": code_version(),
        "encoder": encoder_digest(model),
        "processor": processor.to_dict(),
    }
    parts = []
    # One pass over the stream: the units of a cached block are only drawn (to move on) when
    # a later block is missing; a fully cached run draws none.
    stream = None
    blocks = range(0, num_units, block_size)
    for start in tqdm(blocks, desc=f"encode {description}", unit="block"):
        count = min(block_size, num_units - start)
        key_parts = {**common, "start": start, "count": count}
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
        entry = cache_dir / f"synthetic-features-{key}"
        parts.append(entry)
        if (entry / FEATURES_FILE).exists() and stream is None:
            continue
        if stream is None:
            from milan_hf.probe_world.synthetic_units import iter_synthetic_units

            stream = islice(iter_synthetic_units(seed, num_units, settings), start, None)
        rows = list(islice(stream, count))
        if not (entry / FEATURES_FILE).exists():
            _encode_synthetic_block(model, processor, rows, entry)
    return _read_synthetic_blocks(parts)


def _encode_synthetic_block(model, processor, rows: list[dict], entry: Path) -> None:
    from milan_hf.inference import encode_exemplar_sets as encode_distinct_images

    encoded = encode_distinct_images(rows, model, processor)
    with staged_directory(entry) as staging:
        tensors = {
            "features": encoded["exemplar_features"].cpu().half(),
            "exemplar_mask": encoded["exemplar_mask"].cpu().to(torch.uint8),
        }
        save_file(tensors, str(staging / FEATURES_FILE))
        units = [{"descriptions": r["descriptions"], "concept": r["concept"]} for r in rows]
        (staging / SYNTHETIC_UNITS_FILE).write_text(json.dumps(units))


def _read_synthetic_blocks(entries: list[Path]) -> SyntheticFeatures:
    features, masks, descriptions, concepts = [], [], [], []
    for entry in entries:
        tensors = load_file(str(entry / FEATURES_FILE))
        features.append(tensors["features"])
        masks.append(tensors["exemplar_mask"].bool())
        units = json.loads((entry / SYNTHETIC_UNITS_FILE).read_text())
        descriptions.extend(unit["descriptions"] for unit in units)
        concepts.extend(unit["concept"] for unit in units)
    k = max(part.shape[1] for part in features)
    return SyntheticFeatures(
        torch.cat([_pad_exemplars(part, k) for part in features]),
        torch.cat([_pad_exemplars(part, k) for part in masks]),
        descriptions,
        concepts,
    )


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
            exemplar_features=self.features[units].to(input_ids.device, torch.float32),
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
            exemplar_features=features[start : start + batch_size].to(device, torch.float32),
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
    known_validation: dict[int, tuple[str, ...]] | None = None,
) -> list[dict[str, float]]:
    """Fit the decoder on (unit, description) pairs from cached features (``units``: the train
    and validation unit indices); keep the best validation BLEU, then loss.

    With ``known_validation`` (validation units of known meaning: unit -> concept expression),
    the best epoch is the one whose descriptions of those units name their concepts most
    often (``phrasing.expression_named``, the checkpoint's decoding), then BLEU, then loss:
    BLEU rewards wording overlap, not the concept, and swings by several points between epochs.
    """
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
        entry["validation_bleu"] = bleu
        if not known_validation:
            return {**entry, "score": (bleu, -validation_loss)}
        accuracy = known_unit_accuracy(
            unwrapped, tokenizer, features, exemplar_mask, known_validation
        )
        entry["validation_concept_accuracy"] = accuracy
        return {**entry, "score": (accuracy, bleu, -validation_loss)}

    history, best_state = _fit(
        prepared, loaders, optimizer, accelerator, schedule, "train captioner", score
    )
    accelerator.unwrap_model(prepared).load_state_dict(best_state)
    if model.prior is not None:
        model.prior.requires_grad_(True)
    model.eval()
    return history


def known_unit_accuracy(
    model: MilanCaptionerModel,
    tokenizer: MilanTokenizer,
    features: torch.Tensor,
    exemplar_mask: torch.Tensor,
    known: dict[int, tuple[str, ...]],
    num_beams: int = 5,
) -> float:
    """Share of the ``known`` units (unit -> concept expression) whose description, decoded
    with the model's PMI weight and ``num_beams`` beams, names the concept strictly."""
    from milan_hf.decoding_selection import describe_with, score_descriptions

    units = sorted(known)
    texts = describe_with(
        model,
        tokenizer,
        features[units],
        exemplar_mask[units],
        pmi_weight=float(getattr(model.generation_config, "pmi_weight", 0.0) or 0.0),
        num_beams=num_beams,
    )
    return score_descriptions(texts, [known[u] for u in units])["strict_accuracy"]


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
        mask_location_grid=getattr(args, "mask_location_grid", 0),
        mask_context_pooling=getattr(args, "mask_context_pooling", False),
        mask_below_context=getattr(args, "mask_below_context", False),
        exemplar_feature_norm=getattr(args, "exemplar_feature_norm", False),
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


def synthetic_settings(args: argparse.Namespace) -> Any:
    """The synthetic units' settings from the options, or None without ``--synthetic-units``;
    checks both seeds are training seeds (below the benchmark's) and differ."""
    from milan_hf.probe_world.synthetic_units import SyntheticUnitSettings

    if not getattr(args, "synthetic_units", 0):
        if not args.dataset:
            raise ValueError("Nothing to train on: give --dataset, --synthetic-units or both.")
        return None
    if args.synthetic_units < 2 or args.synthetic_validation_units < 1:
        raise ValueError(
            f"--synthetic-units must be >= 2 and --synthetic-validation-units >= 1, got "
            f"{args.synthetic_units} and {args.synthetic_validation_units}"
        )
    require_training_seed(args.synthetic_seed)
    require_training_seed(args.synthetic_validation_seed, "--synthetic-validation-seed")
    if args.synthetic_seed == args.synthetic_validation_seed:
        raise ValueError(f"training and validation synthetic seeds are both {args.synthetic_seed}")
    return SyntheticUnitSettings(
        image_size=args.synthetic_image_size or args.image_size,
        composition_share=args.synthetic_composition_share,
        units_per_block=args.synthetic_units_per_block,
        scenes_per_block=args.synthetic_scenes_per_block,
    )


def build_tokenizer(
    texts: list[str], settings: Any, min_frequency: int, cache_dir: Path | None = None
) -> MilanTokenizer:
    """Vocabulary of the training descriptions, plus every word the grammar can write when
    synthetic units are used (so no synthetic or benchmark description meets ``<unk>``)."""
    if settings is not None:
        # Each grammar word as a text of its own, repeated past min_frequency.
        words = grammar_words(settings.use_stamps, cache_dir)
        texts = texts + list(words) * max(1, min_frequency)
    return MilanTokenizer.from_descriptions(texts, min_frequency=min_frequency)


@lru_cache(maxsize=2)
def grammar_words(use_stamps: bool, cache_dir: Path | None = None) -> tuple[str, ...]:
    """``phrasing.grammar_vocabulary()`` sorted; it takes tens of seconds (it phrases every
    concept), so it is cached on disk under the synthetic-unit code version."""
    from milan_hf.probe_world import concepts, phrasing
    from milan_hf.probe_world.synthetic_units import code_version

    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / f"grammar-words-{code_version()}-stamps{int(use_stamps)}.json"
        if cached.is_file():
            return tuple(json.loads(cached.read_text()))
    stamps = concepts.load_stamps() if use_stamps else ()
    words = tuple(sorted(phrasing.grammar_vocabulary(stamps)))
    if cached is not None:
        from milan_hf.staged_output import write_text_atomically

        cached.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(cached, json.dumps(words))
    return words


@dataclass
class TrainingData:
    """Every unit's cached features with its descriptions; which units train and validate; the
    concept expressions of the validation units of known meaning (decoding is chosen there)."""

    features: torch.Tensor
    exemplar_mask: torch.Tensor
    descriptions: list[list[str]]
    units: tuple[list[int], list[int]]
    known_validation: dict[int, tuple[str, ...]]
    sources: dict[str, int]


def training_data(args, model, processor, corpus, settings, corpus_units, cache_dir, device):
    """Corpus rows (when given) and synthetic units (when asked) in one feature table."""
    from milan_hf.decoding_selection import parse_concept

    parts, train_units, validation_units, known, sources = [], [], [], {}, {}
    if corpus is not None:
        dataset, descriptions = corpus
        features, mask = encode_exemplar_sets(
            model, processor, dataset, cache_dir, args.encode_batch_size, device
        )
        parts.append((features.half(), mask, descriptions))
        train_units += corpus_units[0]
        validation_units += corpus_units[1]
        sources["corpus"] = len(descriptions)
    if settings is not None:
        for seed, count, role in (
            (args.synthetic_seed, args.synthetic_units, "training"),
            (args.synthetic_validation_seed, args.synthetic_validation_units, "validation"),
        ):
            offset = sum(len(part[2]) for part in parts)
            synthetic = encode_synthetic_units(
                model, processor, seed, count, settings, cache_dir, f"{role} synthetic units"
            )
            parts.append((synthetic.features, synthetic.exemplar_mask, synthetic.descriptions))
            chosen = list(range(offset, offset + count))
            (train_units if role == "training" else validation_units).extend(chosen)
            if role == "validation":
                known = {u: parse_concept(c) for u, c in zip(chosen, synthetic.concepts)}
            sources[f"synthetic_{role}"] = count
    k = max(part[0].shape[1] for part in parts)
    return TrainingData(
        torch.cat([_pad_exemplars(part[0], k) for part in parts]),
        torch.cat([_pad_exemplars(part[1], k) for part in parts]),
        [texts for part in parts for texts in part[2]],
        (sorted(train_units), sorted(validation_units)),
        known,
        sources,
    )


def train(args: argparse.Namespace) -> dict[str, Any]:
    """The whole recipe from ``milan-hf train``'s options (:mod:`milan_hf.commands.train`):
    vocabulary, feature cache, prior, captioner, decoding sweep, card, atomic save, optional
    push. Returns the training metrics (also saved as ``training_metrics.json``)."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not args.overwrite:
        raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it.")

    settings = synthetic_settings(args)
    corpus = _read_descriptions(args) if args.dataset else None
    corpus_units = ([], [])
    if corpus is not None:
        corpus_units = split_units(len(corpus[1]), args.validation_fraction, args.seed)
    corpus_texts = [text for unit in corpus_units[0] for text in corpus[1][unit]] if corpus else []
    cache_dir = Path(args.feature_cache_dir or Path.home() / ".cache" / "milan_hf" / "features")
    tokenizer = build_tokenizer(corpus_texts, settings, args.min_word_frequency, cache_dir)
    model = build_model(args, tokenizer)
    # The text-free model learns which token ids are function words (no_repeat_words needs it).
    model.generation_config.word_roles = NoRepeatWordsLogitsProcessor.word_roles(tokenizer)
    processor = MilanProcessor.from_model_config(model.config, tokenizer)

    data = training_data(
        args, model, processor, corpus, settings, corpus_units, cache_dir, accelerator.device
    )
    max_tokens = model.config.max_description_length
    prior_ids = [
        tokenize(tokenizer, [text for u in chosen for text in data.descriptions[u]], max_tokens)
        for chosen in data.units
    ]
    prior_schedule = Schedule(
        args.batch_size, args.learning_rate, args.prior_max_epochs, args.prior_patience
    )
    prior_history = train_prior(model, *prior_ids, prior_schedule, accelerator)
    schedule = Schedule(args.batch_size, args.learning_rate, args.max_epochs, args.patience)
    captioner_history = train_captioner(
        model, tokenizer, data.features, data.exemplar_mask, data.descriptions, data.units,
        schedule, accelerator, data.known_validation,
    )  # fmt: skip
    model.to("cpu")
    metrics = training_metrics(
        data.units, data.descriptions, tokenizer, prior_history, captioner_history
    )
    metrics["sources"] = data.sources
    if data.known_validation and not getattr(args, "no_decoding_sweep", False):
        metrics["decoding_sweep"] = choose_decoding(args, model, tokenizer, data)
    if accelerator.is_main_process:
        _save(args, model, processor, output_dir, metrics)
    return metrics


def choose_decoding(args, model, tokenizer, data: TrainingData) -> dict[str, Any]:
    """Sweep λ and beam width on the validation units of known meaning; the winner becomes
    the checkpoint's default decoding."""
    from milan_hf.decoding_selection import sweep_decoding

    units = sorted(data.known_validation)
    winner, table = sweep_decoding(
        model,
        tokenizer,
        data.features[units],
        data.exemplar_mask[units],
        [data.known_validation[u] for u in units],
        pmi_weights=args.sweep_pmi_weights,
        beam_widths=args.sweep_beam_widths,
        batch_size=args.batch_size,
    )
    model.generation_config.pmi_weight = winner["pmi_weight"]
    model.generation_config.num_beams = winner["num_beams"]
    return {"units": len(units), "winner": winner, "table": table}


def _save(args, model, processor, output_dir: Path, metrics: dict[str, Any]) -> None:
    card = render_model_card(_card_fields(args, model, metrics))
    save_atomically(model, processor, output_dir, metrics, card, args.overwrite)
    if args.push_to_hub:
        push_to_hub(output_dir, args.push_to_hub, private=args.private)
    print(
        f"Saved to {output_dir}: validation BLEU {metrics['validation_bleu']:.2f}, "
        f"validation loss {metrics['validation_loss']:.3f}, "
        f"prior validation loss {metrics['prior_validation_loss']:.3f}"
    )


def training_metrics(
    units: tuple[list[int], list[int]],
    descriptions: list[list[str]],
    tokenizer: MilanTokenizer,
    prior_history: list[dict[str, float]],
    captioner_history: list[dict[str, float]],
) -> dict[str, Any]:
    """What ``training_metrics.json`` records: data sizes, the best epoch, both histories."""
    best = max(
        captioner_history,
        key=lambda entry: (
            entry.get("validation_concept_accuracy", 0.0),
            entry["validation_bleu"],
            -entry["validation_loss"],
        ),
    )
    train_units, validation_units = units
    return {
        "train_units": len(train_units),
        "validation_units": len(validation_units),
        "train_descriptions": sum(len(descriptions[u]) for u in train_units),
        "vocabulary_size": len(tokenizer),
        "validation_bleu": best["validation_bleu"],
        "validation_loss": best["validation_loss"],
        **(
            {"validation_concept_accuracy": best["validation_concept_accuracy"]}
            if "validation_concept_accuracy" in best
            else {}
        ),
        "prior_validation_loss": min(entry["validation_loss"] for entry in prior_history),
        "captioner_history": captioner_history,
        "prior_history": prior_history,
    }


def _card_fields(
    args: argparse.Namespace, model: MilanCaptionerModel, metrics: dict[str, Any]
) -> dict[str, Any]:
    return {
        "repo_id": args.push_to_hub or Path(args.output_dir).name,
        "dataset_name": args.dataset_name or _data_name(args),
        **trained_captioner_card_fields(model, metrics),
        "vocabulary_size": metrics["vocabulary_size"],
    }


def _data_name(args: argparse.Namespace) -> str:
    names = [Path(args.dataset).name or args.dataset] if args.dataset else []
    if getattr(args, "synthetic_units", 0):
        names.append(f"{args.synthetic_units} synthetic units (seed {args.synthetic_seed})")
    return " + ".join(names)


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
