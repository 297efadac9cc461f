"""BERTScore F1 of generated unit descriptions against each unit's reference descriptions.

A local ``evaluate`` metric wrapping ``bert-score``. MILAN's headline number is BERTScore F1 of
a unit's generated description against its human descriptions, best over references.

Defaults work offline: the locally installed all-MiniLM-L6-v2 (last of its 6 layers), no idf,
no baseline rescaling (bert-score has no baseline for that model). Its raw F1 values are NOT on
the paper's scale. For the paper's setting pass ``**PAPER_BERTSCORE_SETTINGS`` (roberta-large,
layer 17, idf-weighted, rescaled with bert-score's shipped English baseline), which needs the
Hub to download roberta-large.
"""

from __future__ import annotations

import functools

import datasets
import evaluate
from bert_score import BERTScorer

from milan_hf.metrics.sentence_model import (
    DEFAULT_SENTENCE_MODEL_NUM_LAYERS,
    default_sentence_model_path,
)

#: The original MILAN generalization experiments build ``BERTScorer(lang="en", idf=True,
#: rescale_with_baseline=True)``: roberta-large at layer 17, idf weights from the test set's
#: references, scores rescaled by bert-score's English baseline (shipped with bert-score).
PAPER_BERTSCORE_SETTINGS = {
    "model_type": "roberta-large",
    "idf": True,
    "rescale_with_baseline": True,
}

_DESCRIPTION = """\
BERTScore (Zhang et al., 2020) with bert-score: greedy matching of contextual token embeddings
between a prediction and a reference. With several references per prediction, each of
precision, recall and F1 is the best over the references. Default model: the local
all-MiniLM-L6-v2 (6 layers), raw (not rescaled) scores.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): one generated description per unit.
    references (list of list of str): the unit's reference descriptions (at least one each).
    model_type (str): a Hub model name or a local model directory (default: local MiniLM).
    num_layers (int): which hidden layer to use; required for models bert-score does not know.
    idf (bool): weight tokens by inverse document frequency over all references.
    rescale_with_baseline (bool): rescale with bert-score's baseline (needs a known model).
    lang (str): language of the baseline file, default "en".
    batch_size (int): sentence pairs per forward pass.
    device (str): torch device; default cuda when available, else cpu.
Returns:
    bertscore_precision, bertscore_recall, bertscore_f1 (list of float): one per prediction.
    bertscore_hashcode (str): bert-score's identifier of the exact setting.
"""

_CITATION = """\
@inproceedings{bert-score,
  title = {BERTScore: Evaluating Text Generation with BERT},
  author = {Tianyi Zhang and Varsha Kishore and Felix Wu and Kilian Q. Weinberger and Yoav Artzi},
  booktitle = {International Conference on Learning Representations},
  year = {2020},
}
"""


class DescriptionBertScore(evaluate.Metric):
    """bert-score BERTScore, best over each prediction's references."""

    #: Result keys holding one value per prediction (the corpus score is their mean).
    per_prediction_keys = ("bertscore_precision", "bertscore_recall", "bertscore_f1")

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
            reference_urls=["https://github.com/Tiiiger/bert_score"],
        )

    def _compute(
        self,
        predictions,
        references,
        model_type: str | None = None,
        num_layers: int | None = None,
        idf: bool = False,
        rescale_with_baseline: bool = False,
        lang: str = "en",
        batch_size: int = 64,
        device: str | None = None,
    ):
        for index, unit_references in enumerate(references):
            if len(unit_references) == 0:
                raise ValueError(f"Prediction {index} has no reference descriptions (got []).")
        # A captioner may end a description at once. bert-score's rule for an empty candidate
        # is a score of 0, but under transformers 5 it crashes before applying it (its
        # empty-sentence branch calls a tokenizer method that no longer exists): apply the
        # rule here and score the rest.
        kept = [index for index, text in enumerate(predictions) if str(text).strip()]
        if len(kept) < len(predictions):
            result = {"bertscore_hashcode": None}
            if kept:
                result = self._compute(
                    [predictions[i] for i in kept],
                    [references[i] for i in kept],
                    model_type=model_type,
                    num_layers=num_layers,
                    idf=idf,
                    rescale_with_baseline=rescale_with_baseline,
                    lang=lang,
                    batch_size=batch_size,
                    device=device,
                )
            for key in ("bertscore_precision", "bertscore_recall", "bertscore_f1"):
                scores = [0.0] * len(predictions)
                for index, value in zip(kept, result.get(key, [])):
                    scores[index] = value
                result[key] = scores
            return result
        uses_default_model = model_type is None
        if uses_default_model:
            model_type = default_sentence_model_path()
            num_layers = num_layers or DEFAULT_SENTENCE_MODEL_NUM_LAYERS
        scorer = load_bert_scorer(
            str(model_type), num_layers, idf, rescale_with_baseline, lang, device
        )
        if idf:
            # Document frequencies over this corpus's references, as bert-score recommends.
            scorer.compute_idf([text for unit in references for text in unit])
        precision, recall, f1 = scorer.score(
            list(predictions), [list(unit) for unit in references], batch_size=batch_size
        )
        return {
            "bertscore_precision": precision.tolist(),
            "bertscore_recall": recall.tolist(),
            "bertscore_f1": f1.tolist(),
            # bert-score's hash names the model; keep this machine's install path out of it.
            "bertscore_hashcode": scorer.hash.replace(model_type, "all-MiniLM-L6-v2")
            if uses_default_model
            else scorer.hash,
        }


@functools.lru_cache(maxsize=2)
def load_bert_scorer(
    model_type: str,
    num_layers: int | None = None,
    idf: bool = False,
    rescale_with_baseline: bool = False,
    lang: str = "en",
    device: str | None = None,
) -> BERTScorer:
    """Build (once per setting and process) the ``BERTScorer`` behind the metric."""
    from bert_score.utils import model2layers

    if num_layers is None and model_type not in model2layers:
        raise ValueError(
            f"num_layers is required for model_type={model_type!r}: bert-score only knows the "
            "best layer of its named models."
        )
    return BERTScorer(
        model_type=model_type,
        num_layers=num_layers,
        idf=idf,
        rescale_with_baseline=rescale_with_baseline,
        lang=lang if rescale_with_baseline else None,
        device=device,
    )
