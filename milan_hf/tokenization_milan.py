"""Word-level tokenizer shared by MILAN's captioner and prior.

As in the original code, descriptions are lowercased and split into words and punctuation;
stopwords and punctuation are kept (they matter for fluent descriptions). Special tokens have
fixed ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3; words follow by frequency.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer
from transformers import PreTrainedTokenizerFast

from milan_hf.configuration_milan import (
    BOS_TOKEN,
    BOS_TOKEN_ID,
    EOS_TOKEN,
    EOS_TOKEN_ID,
    PAD_TOKEN,
    UNK_TOKEN,
)

SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]
_SPECIAL_TOKEN_KWARGS = {
    "pad_token": PAD_TOKEN,
    "bos_token": BOS_TOKEN,
    "eos_token": EOS_TOKEN,
    "unk_token": UNK_TOKEN,
    # Joins " ," → "," and similar when decoding words separated by spaces.
    "clean_up_tokenization_spaces": True,
}


def _word_level_tokenizer(vocab: dict[str, int] | None = None) -> Tokenizer:
    tokenizer = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Words (\w+) and runs of punctuation become separate tokens.
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        special_tokens=[(BOS_TOKEN, BOS_TOKEN_ID), (EOS_TOKEN, EOS_TOKEN_ID)],
    )
    return tokenizer


class MilanTokenizer(PreTrainedTokenizerFast):
    """``PreTrainedTokenizerFast`` over a word-level ``tokenizers`` model.

    Build one with ``MilanTokenizer.from_descriptions(texts)`` (vocabulary learned from the
    training descriptions) or ``MilanTokenizer.from_words(words)`` (a given vocabulary, e.g.
    the original release's); save and load with ``save_pretrained``/``from_pretrained``.
    """

    model_input_names = ["input_ids", "attention_mask"]

    # No __init__ override: with one, transformers 5 would rebuild the backend from the bare
    # vocabulary on load instead of reading tokenizer.json as saved.

    @classmethod
    def from_descriptions(
        cls, descriptions: Iterable[str], min_frequency: int = 1
    ) -> MilanTokenizer:
        """Learn the vocabulary (words seen at least ``min_frequency`` times)."""
        tokenizer = _word_level_tokenizer()
        trainer = WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=min_frequency)
        tokenizer.train_from_iterator(descriptions, trainer=trainer)
        return cls(tokenizer_object=tokenizer, **_SPECIAL_TOKEN_KWARGS)

    @classmethod
    def from_words(cls, words: Iterable[str]) -> MilanTokenizer:
        """A tokenizer whose words get ids 4, 5, ... in the given order."""
        vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
        for word in words:
            if word in vocab:
                raise ValueError(f"Word {word!r} appears twice or clashes with a special token.")
            vocab[word] = len(vocab)
        return cls(tokenizer_object=_word_level_tokenizer(vocab), **_SPECIAL_TOKEN_KWARGS)
