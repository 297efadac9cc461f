"""Cosine similarity of sentence embeddings between a unit's description and its references.

A local ``evaluate`` metric. Sentences are embedded as sentence-transformers does for
all-MiniLM-L6-v2: token embeddings of the last layer, mean-pooled over real (non-padding)
tokens, L2-normalised. Each prediction is compared with every one of its references; the metric
reports the best (``cosine_max``) and the average (``cosine_mean``) cosine.
"""

from __future__ import annotations

import functools

import datasets
import evaluate
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from milan_hf.metrics.sentence_model import default_sentence_model_path

_DESCRIPTION = """\
Cosine similarity between mean-pooled sentence embeddings (default: the local
all-MiniLM-L6-v2) of each prediction and each of its references; max and mean over references.
Identical sentences score 1.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): one generated description per unit.
    references (list of list of str): the unit's reference descriptions (at least one each).
    model_name_or_path (str): a Hub model name or local directory (default: local MiniLM).
    batch_size (int): sentences per forward pass.
    device (str): torch device; default cuda when available, else cpu.
Returns:
    cosine_max (list of float): best cosine over each prediction's references.
    cosine_mean (list of float): mean cosine over each prediction's references.
"""

_CITATION = """\
@inproceedings{reimers-2019-sentence-bert,
  title = "Sentence-{BERT}: Sentence Embeddings using Siamese {BERT}-Networks",
  author = "Reimers, Nils and Gurevych, Iryna",
  booktitle = "Proceedings of EMNLP-IJCNLP",
  year = "2019",
}
"""


class DescriptionEmbeddingCosine(evaluate.Metric):
    """Sentence-embedding cosine of each prediction with its references (max and mean)."""

    #: Result keys holding one value per prediction (the corpus score is their mean).
    per_prediction_keys = ("cosine_max", "cosine_mean")

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.List(datasets.Value("string")),
                }
            ),
            reference_urls=["https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2"],
        )

    def _compute(
        self,
        predictions,
        references,
        model_name_or_path: str | None = None,
        batch_size: int = 128,
        device: str | None = None,
    ):
        for index, unit_references in enumerate(references):
            if len(unit_references) == 0:
                raise ValueError(f"Prediction {index} has no reference descriptions (got []).")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer, model = load_sentence_encoder(
            str(model_name_or_path or default_sentence_model_path()), device
        )
        # Embed each distinct sentence once: references repeat across methods and units.
        sentences = sorted(set(predictions) | {text for unit in references for text in unit})
        embeddings = embed_sentences(sentences, tokenizer, model, batch_size, device)
        row_of = {sentence: row for row, sentence in enumerate(sentences)}
        cosine_max, cosine_mean = [], []
        for prediction, unit_references in zip(predictions, references):
            prediction_embedding = embeddings[row_of[prediction]]
            reference_embeddings = embeddings[[row_of[text] for text in unit_references]]
            cosines = reference_embeddings @ prediction_embedding
            cosine_max.append(cosines.max().item())
            cosine_mean.append(cosines.mean().item())
        return {"cosine_max": cosine_max, "cosine_mean": cosine_mean}


@functools.lru_cache(maxsize=2)
def load_sentence_encoder(model_name_or_path: str, device: str):
    """Load (once per model and process) a tokenizer and encoder in eval mode."""
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    model = AutoModel.from_pretrained(model_name_or_path).to(device).eval()
    return tokenizer, model


@torch.no_grad()
def embed_sentences(
    sentences: list[str], tokenizer, model, batch_size: int = 128, device: str = "cpu"
) -> torch.Tensor:
    """Return L2-normalised mean-pooled embeddings, one row per sentence."""
    batches = range(0, len(sentences), batch_size)
    rows = []
    for start in tqdm(batches, desc="embedding sentences", disable=len(batches) < 10):
        encoded = tokenizer(
            sentences[start : start + batch_size],
            padding=True,
            truncation=True,
            return_tensors="pt",
        ).to(device)
        token_embeddings = model(**encoded).last_hidden_state
        # Mean over real tokens only: padding must not pull short sentences together.
        weights = encoded["attention_mask"].unsqueeze(-1).to(token_embeddings.dtype)
        pooled = (token_embeddings * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        rows.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
    return torch.cat(rows) if rows else torch.empty(0)
