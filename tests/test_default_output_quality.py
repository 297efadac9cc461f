"""The default run's descriptions are well-formed English: the defect check on real output.

Runs the README's main job (``milan-hf describe`` on the embedded default, with its default
decoding) on a sample of units of both default layers and asserts that not one description has
a defect (``phrasing.description_defects``: doubled words or phrases, "parts of parts", a
dangling "either", a cut-off or over-long string). The filler share of the full run is measured
by ``scripts/default_run_quality.py`` (README, "Known-unit benchmark").
"""

from __future__ import annotations

import csv

from milan_hf.default_run import DEFAULT_LAYERS, describe_default, description_quality


def test_description_quality_counts_filler_defects_and_repetition():
    quality = description_quality(
        [
            "red circles",
            "houses",
            "houses and red houses",
            "houses at the top",
            "nothing in particular",
            "",
        ]
    )
    assert quality["units"] == 5  # the empty string is not a description
    assert quality["filler_share"] == 0.2
    assert quality["defect_count"] == 1  # "houses ... houses": a doubled word
    assert quality["most_common_word"] == "houses"
    assert quality["most_common_word_share"] == 0.6
    assert quality["distinct_share"] == 1.0


def test_default_output_has_no_defect_strings(tmp_path, monkeypatch):
    monkeypatch.setenv("MILAN_HF_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "run"
    descriptions = describe_default(output, units=16, report=False, progress=False)
    assert sorted(set(descriptions["layer"])) == sorted(DEFAULT_LAYERS)
    with open(output / "descriptions.csv", newline="") as handle:
        texts = [row["description"] for row in csv.DictReader(handle) if row["dead"] != "True"]
    assert len(texts) >= 24
    quality = description_quality(texts)
    assert quality["defect_count"] == 0, quality["defective_examples"]
