"""The default run's descriptions are well-formed English: the defect check on real output.

Runs the README's main job (``milan-hf describe`` on the embedded default, with its default
decoding) on a sample of units of both default layers and asserts that not one description has
a defect (``phrasing.description_defects``: doubled words or phrases, "parts of parts", a
dangling "either", a cut-off or over-long string). The filler share and concept accuracy of
the full run are measured by ``milan-hf benchmark`` (README, "Known-unit benchmark").
"""

from __future__ import annotations

from milan_hf.default_run import DEFAULT_LAYERS, describe_default
from milan_hf.probe_world.phrasing import description_defects


def test_default_output_has_no_defect_strings(tmp_path, monkeypatch):
    monkeypatch.setenv("MILAN_HF_CACHE", str(tmp_path / "cache"))
    descriptions = describe_default(tmp_path / "run", units=16, report=False, progress=False)
    assert sorted(set(descriptions["layer"])) == sorted(DEFAULT_LAYERS)
    texts = [row["description"] for row in descriptions if not row.get("dead")]
    assert len(texts) >= 24
    defects = {text: description_defects(text) for text in texts if description_defects(text)}
    assert not defects, f"defective default descriptions: {defects}"
