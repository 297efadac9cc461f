"""Hostile input to the HTML report: text that looks like the page's own template, and an
output folder that holds the user's own files."""

from __future__ import annotations

import html
import re

import pytest

from milan_hf.report import write_report
from tests.test_report import dump_dom, embedded_index, exemplar_set, needs_chromium, rendered_units

# Every placeholder of the page template, as a description, a layer name and the title.
PLACEHOLDERS = [
    "__POLICY__",
    "__TITLE__",
    "__STYLE__",
    "__DATA__",
    "__SCRIPT__",
    "__UNIT_COUNT__",
    "__LAYER_COUNT__",
]
TITLE = "__DATA__ of __SCRIPT__ (__UNIT_COUNT__)"


@pytest.fixture(scope="module")
def template_like_report(tmp_path_factory):
    layers = {"__SCRIPT__": 4, "__UNIT_COUNT__": 3}
    exemplars = exemplar_set(layers, k=2)
    descriptions = [
        {"layer": "__SCRIPT__", "unit": unit, "description": text}
        for unit, text in enumerate(PLACEHOLDERS[:4])
    ] + [
        {"layer": "__UNIT_COUNT__", "unit": unit, "description": f"{text} and {text}"}
        for unit, text in enumerate(PLACEHOLDERS[4:])
    ]
    page = write_report(exemplars, descriptions, tmp_path_factory.mktemp("hostile"), title=TITLE)
    return page, descriptions


def test_text_like_a_placeholder_is_kept_as_text_in_the_index(template_like_report):
    page, descriptions = template_like_report
    index = embedded_index(page)  # the index still parses: nothing was substituted into it
    assert index["layers"] == ["__SCRIPT__", "__UNIT_COUNT__"]
    assert [unit["d"] for unit in index["units"]] == [row["description"] for row in descriptions]
    text = page.read_text()
    assert f"<title>{html.escape(TITLE)}</title>" in text
    assert f"<h1>{html.escape(TITLE)}</h1>" in text
    assert "7 units in 2 layers." in text
    assert text.count('<script type="application/json"') == 1
    assert len(re.findall(r"<script>", text)) == 1  # the page's script appears once


@needs_chromium
def test_every_unit_renders_with_its_placeholder_text(template_like_report, tmp_path):
    page, descriptions = template_like_report
    dom = dump_dom(tmp_path, page.as_uri())
    assert rendered_units(dom) == [("__SCRIPT__", u) for u in range(4)] + [
        ("__UNIT_COUNT__", u) for u in range(3)
    ]
    for row in descriptions:
        assert f'<p class="description">{row["description"]}</p>' in dom
    assert '<h2 class="layer-heading">__SCRIPT__</h2>' in dom


def test_rewriting_keeps_the_users_folders_under_thumbs(tmp_path):
    exemplars = exemplar_set({"layer1": 2}, k=2)
    write_report(exemplars, [], tmp_path)
    own = tmp_path / "thumbs" / "my-figures"
    own.mkdir()
    (own / "figure.png").write_bytes(b"mine")
    hexlike = tmp_path / "thumbs" / "0123456789ab"  # named like a build, but not one
    hexlike.mkdir()
    (hexlike / "notes.txt").write_text("mine too")
    write_report(exemplars, [], tmp_path)
    assert (own / "figure.png").read_bytes() == b"mine"
    assert (hexlike / "notes.txt").read_text() == "mine too"
    builds = [p for p in (tmp_path / "thumbs").iterdir() if p not in (own, hexlike)]
    assert len(builds) == 1  # the first report's thumbnails are gone, the second's are there


def test_an_index_html_the_report_did_not_write_is_refused(tmp_path):
    users_page = tmp_path / "index.html"
    users_page.write_text("<html><body>my own page</body></html>")
    with pytest.raises(FileExistsError, match=re.escape(str(users_page))):
        write_report(exemplar_set({"layer1": 2}, k=2), [], tmp_path)
    assert users_page.read_text() == "<html><body>my own page</body></html>"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index.html"]
