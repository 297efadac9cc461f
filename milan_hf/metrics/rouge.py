"""ROUGE-L F-measure of generated unit descriptions against several references per unit.

A local ``evaluate`` metric wrapping ``rouge-score``: for each unit, the ROUGE-L F-measure
against every reference, keeping the best (``RougeScorer.score_multi``); the corpus score is
the mean over units.
"""

from __future__ import annotations

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = """\
ROUGE-L (Lin, 2004): F-measure of the longest common subsequence of words between a prediction
and a reference, computed by rouge-score. With several references, each prediction keeps its
best reference. Scores are in [0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): one generated description per unit.
    references (list of list of str): the unit's reference descriptions (at least one each).
    use_stemmer (bool): Porter-stem words before matching (default False, as evaluate's rouge).
Returns:
    rougeL (list of float): best ROUGE-L F-measure of each prediction over its references.
"""

_CITATION = """\
@inproceedings{lin-2004-rouge,
  title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
  author = "Lin, Chin-Yew",
  booktitle = "Text Summarization Branches Out",
  year = "2004",
}
"""


class DescriptionRougeL(evaluate.Metric):
    """rouge-score ROUGE-L F, best over each prediction's references."""

    #: Result keys holding one value per prediction (the corpus score is their mean).
    per_prediction_keys = ("rougeL",)

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
            reference_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references, use_stemmer: bool = False):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        scores = []
        for index, (prediction, unit_references) in enumerate(zip(predictions, references)):
            if len(unit_references) == 0:
                raise ValueError(f"Prediction {index} has no reference descriptions (got []).")
            scores.append(scorer.score_multi(unit_references, prediction)["rougeL"].fmeasure)
        return {"rougeL": scores}
