"""Corpus BLEU of generated unit descriptions against several reference descriptions per unit.

A local ``evaluate`` metric (hub metric scripts do not load offline). It wraps ``sacrebleu``:
corpus BLEU over all units (the number the captioner's early stopping and the paper's tables
use) plus a per-unit sentence BLEU (effective n-gram order, sacrebleu's default smoothing) for
inspecting single units. The mean of sentence BLEU is not corpus BLEU; report the corpus score.
Units may have different numbers of references.
"""

from __future__ import annotations

import datasets
import evaluate
from sacrebleu.metrics import BLEU

_DESCRIPTION = """\
BLEU (Papineni et al., 2002) computed with sacrebleu, multi-reference. Scores are on sacrebleu's
0-100 scale. `bleu` is the corpus score over all predictions; `sentence_bleu` holds one
sentence-level score per prediction.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): one generated description per unit.
    references (list of list of str): the unit's reference descriptions (at least one each).
    tokenize (str): sacrebleu tokenizer, default "13a".
    lowercase (bool): compare lowercased text, default False.
Returns:
    bleu (float): corpus BLEU, 0-100.
    bleu_precisions (list of float): the 1- to 4-gram precisions of the corpus score.
    bleu_brevity_penalty (float), bleu_length_ratio (float).
    sentence_bleu (list of float): BLEU of each prediction against its own references.
"""

_CITATION = """\
@inproceedings{post-2018-call,
  title = "A Call for Clarity in Reporting {BLEU} Scores",
  author = "Post, Matt",
  booktitle = "Proceedings of the Third Conference on Machine Translation",
  year = "2018",
}
"""


class DescriptionBleu(evaluate.Metric):
    """sacrebleu corpus BLEU with a variable number of references per prediction."""

    #: Result keys holding one value per prediction (the rest describe the whole corpus).
    per_prediction_keys = ("sentence_bleu",)

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
            reference_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, tokenize: str = "13a", lowercase: bool = False):
        _check_references(references)
        # sacrebleu wants reference *streams* (the j-th reference of every prediction); units
        # with fewer references are padded with None, which sacrebleu skips.
        num_streams = max(len(unit_references) for unit_references in references)
        streams = [
            [unit[j] if j < len(unit) else None for unit in references] for j in range(num_streams)
        ]
        corpus = BLEU(tokenize=tokenize, lowercase=lowercase).corpus_score(predictions, streams)
        sentence_scorer = BLEU(tokenize=tokenize, lowercase=lowercase, effective_order=True)
        sentence_scores = [
            sentence_scorer.sentence_score(prediction, unit_references).score
            for prediction, unit_references in zip(predictions, references)
        ]
        return {
            "bleu": corpus.score,
            "bleu_precisions": list(corpus.precisions),
            "bleu_brevity_penalty": corpus.bp,
            "bleu_length_ratio": corpus.ratio,
            "sentence_bleu": sentence_scores,
        }


def _check_references(references) -> None:
    for index, unit_references in enumerate(references):
        if len(unit_references) == 0:
            raise ValueError(f"Prediction {index} has no reference descriptions (got []).")
