"""The HTML report: thumbnails, escaping, atomic writes, and the page in headless Chromium."""

from __future__ import annotations

import html
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from milan_hf.report import CONTOUR_COLOR, OUTSIDE_BRIGHTNESS, STRIP_GAP, write_report
from milan_hf.schema import exemplar_features

SIZE = 32
K = 4
HOSTILE = "<script>alert(1)</script> & \"double\" 'single' </script><!-- comment"

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian package 'chromium' is not installed (apt-get install chromium)"
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


# --- synthetic exemplar sets ----------------------------------------------------------------


def stripes_image(seed: int) -> np.ndarray:
    """A blue/green striped image: no yellow anywhere, so the contour colour stands out."""
    rng = np.random.default_rng(seed)
    columns = np.arange(SIZE)
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    image[..., 0] = rng.integers(0, 60)
    image[..., 1] = np.where((columns // 4) % 2, 200, 90)[None, :]
    image[..., 2] = 220
    return image


def square_mask(offset: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[6 + offset : 22 + offset, 8:24] = 1
    return mask


def exemplar_set(layers: dict[str, int], k: int = K, dead: set | None = None) -> datasets.Dataset:
    """``layers`` maps layer name to unit count; ``dead`` holds (layer, unit) keys of dead units."""
    dead = dead or set()
    encoded = [{"bytes": png_bytes(stripes_image(seed)), "path": None} for seed in range(8)]
    masks = np.stack([square_mask(offset % 6) for offset in range(8)])
    rows = {name: [] for name in exemplar_features(SIZE, with_images=True)}
    for layer, count in layers.items():
        for unit in range(count):
            is_dead = (layer, unit) in dead
            picks = [(unit + j) % 8 for j in range(k)]
            rows["layer"].append(layer)
            rows["unit"].append(unit)
            rows["ids"].append(picks)
            rows["activations"].append([0.0] * k if is_dead else [3.0 - 0.5 * j for j in range(k)])
            rows["masks"].append(np.zeros((k, SIZE, SIZE), np.uint8) if is_dead else masks[picks])
            rows["threshold"].append(float("nan") if is_dead else 0.5)
            rows["dead"].append(is_dead)
            rows["images"].append([encoded[pick] for pick in picks])
    return datasets.Dataset.from_dict(rows, features=exemplar_features(SIZE, with_images=True))


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


DESCRIPTIONS = [
    {"layer": "layer1", "unit": 0, "description": HOSTILE, "score": -1.5, "log_p_d": -7.25},
    {"layer": "layer1", "unit": 1, "description": "red stripes", "score": -2.0, "log_p_d": -3.0},
    {
        "layer": "layer2",
        "unit": 0,
        "description": "vertical stripes",
        "score": -2.5,
        "log_p_d": None,
    },
    {
        "layer": "layer2",
        "unit": 1,
        "description": "dog faces",
        "score": float("nan"),
        "log_p_d": -1,
    },
    {"layer": "layer2", "unit": 2, "description": "Stripes on top", "score": -3.5, "log_p_d": -4.0},
    {"layer": "layer2", "unit": 3, "description": "sky", "score": -0.5, "log_p_d": -2.0},
]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """layer1: 4 units (2 undescribed), layer2: 5 units (unit 4 dead and undescribed)."""
    exemplars = exemplar_set({"layer1": 4, "layer2": 5}, dead={("layer2", 4)})
    output_dir = tmp_path_factory.mktemp("report")
    return write_report(exemplars, DESCRIPTIONS, output_dir, title="Units of <b>net</b> & co")


def embedded_index(page: Path) -> dict:
    match = re.search(
        r'<script type="application/json" id="report-data">(.*?)</script>', page.read_text()
    )
    return json.loads(match.group(1))


# --- the files --------------------------------------------------------------------------------


def test_thumbnail_strip_dims_outside_and_outlines_the_firing_region(report):
    index = embedded_index(report)
    unit = next(entry for entry in index["units"] if (entry["l"], entry["u"]) == (0, 1))
    strip = np.asarray(Image.open(report.parent / unit["t"]).convert("RGB")).astype(float)
    width = 96  # the default thumbnail_size, for square masks
    assert strip.shape == (96, K * width + (K - 1) * STRIP_GAP, 3)
    assert (unit["w"], unit["ht"]) == (strip.shape[1], strip.shape[0])

    # Exemplar 0 of unit 1 is image 1 with mask square_mask(1): rows 7..22, columns 8..23.
    original = np.asarray(
        Image.fromarray(stripes_image(1)).resize((width, width), Image.Resampling.BILINEAR)
    ).astype(float)
    cell = strip[:, :width]
    scale = width / SIZE
    inside = cell[int(10 * scale) : int(19 * scale), int(11 * scale) : int(21 * scale)]
    inside_original = original[int(10 * scale) : int(19 * scale), int(11 * scale) : int(21 * scale)]
    outside, outside_original = cell[: int(5 * scale)], original[: int(5 * scale)]
    assert abs(inside.mean() - inside_original.mean()) < 8
    assert outside.mean() == pytest.approx(OUTSIDE_BRIGHTNESS * outside_original.mean(), abs=8)

    # The outline: yellow pixels along the square's left edge (column 8 scaled), none in a corner.
    edge = cell[int(11 * scale) : int(19 * scale), int(8 * scale) - 1 : int(8 * scale) + 2]
    yellow = np.abs(edge - np.array(CONTOUR_COLOR, dtype=float)).sum(axis=-1) < 120
    assert yellow.any(axis=1).all()
    corner = cell[:10, :10]
    assert not (np.abs(corner - np.array(CONTOUR_COLOR, dtype=float)).sum(axis=-1) < 120).any()
    # The gap between exemplars is white.
    assert strip[:, width : width + STRIP_GAP].min() > 240


def test_page_is_self_contained_and_escapes_every_text(report):
    page = report.read_text(encoding="utf-8")
    # The hostile description never appears as markup: not raw, not closing the data script.
    assert "<script>alert" not in page
    assert page.count("</script>") == 2  # the data element and the page script, nothing else
    assert "<!-- comment" not in page
    assert "<title>Units of &lt;b&gt;net&lt;/b&gt; &amp; co</title>" in page
    # No network at view time: nothing remote referenced, and the policy forbids it anyway.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)
    assert html.unescape(policy).startswith("default-src 'none'; img-src 'self' file: data:;")

    index = embedded_index(report)
    assert index["layers"] == ["layer1", "layer2"]
    assert index["score_names"] == ["score", "log_p_d"]
    by_key = {(index["layers"][entry["l"]], entry["u"]): entry for entry in index["units"]}
    assert len(by_key) == 9
    assert by_key["layer1", 0]["d"] == HOSTILE  # escaped in the page, intact once parsed
    assert by_key["layer1", 0]["s"] == [-1.5, -7.25]
    assert by_key["layer2", 1]["s"] == [None, -1.0]  # NaN is not JSON: shown as n/a
    assert by_key["layer1", 2]["d"] is None and by_key["layer1", 2]["s"] == []
    assert by_key["layer2", 4]["x"] == 1 and by_key["layer2", 4]["th"] is None
    assert all((report.parent / entry["t"]).is_file() for entry in index["units"])


def test_score_columns_come_from_a_descriptions_dataset(tmp_path):
    exemplars = exemplar_set({"features.3": 3}, k=2)
    descriptions = datasets.Dataset.from_dict(
        {
            "layer": ["features.3", "features.3"],
            "unit": [0, 2],
            "description": ["grass", "text on signs"],
            "log_p_d_given_e": [-2.0, -3.0],
            "log_p_d": [-5.0, -6.0],
            "score": [-1.0, -1.8],
            "captioner": ["embedded", "embedded"],  # text: not a score
            "is_best": [True, True],  # bool: not a score
        }
    )
    page = write_report(exemplars, descriptions, tmp_path / "out", page_size=2)
    index = embedded_index(page)
    assert index["score_names"] == ["log_p_d_given_e", "log_p_d", "score"]
    assert index["page_size"] == 2
    assert [entry["d"] for entry in index["units"]] == ["grass", None, "text on signs"]
    assert index["units"][2]["s"] == [-3.0, -6.0, -1.8]
    assert index["units"][0]["w"] == 2 * 96 + STRIP_GAP


def test_a_description_verification_replaced_says_what_pmi_chose(tmp_path):
    exemplars = exemplar_set({"features.3": 3}, k=2)
    descriptions = datasets.Dataset.from_dict(
        {
            "layer": ["features.3"] * 3,
            "unit": [0, 1, 2],
            "description": ["red areas", "grass", "text <b>"],
            "pmi_description": ["red areas on the left", "grass", "no clear <i>pattern</i>"],
            "faithfulness_auc": [0.9, 0.8, 0.95],
        }
    )
    page = write_report(exemplars, descriptions, tmp_path / "out")
    units = embedded_index(page)["units"]
    assert [entry.get("p") for entry in units] == [
        "red areas on the left",
        None,
        "no clear <i>pattern</i>",
    ]
    assert "<i>pattern</i>" not in page.read_text()  # embedded as data, escaped
    assert "verification replaced the PMI choice" in page.read_text()  # the inlined script


@needs_chromium
def test_a_description_that_names_no_concept_is_marked_as_filler(tmp_path):
    """A region alone ("the upper part of the image") reads like a concept: the card says it is
    not one. A word outside the probe world ("sky") is not filler."""
    exemplars = exemplar_set({"features.3": 3}, k=2)
    descriptions = [
        {"layer": "features.3", "unit": 0, "description": "the upper part of the image"},
        {"layer": "features.3", "unit": 1, "description": "sky"},
        {"layer": "features.3", "unit": 2, "description": "nothing in particular"},
    ]
    page = write_report(exemplars, descriptions, tmp_path / "out")
    assert [entry.get("f") for entry in embedded_index(page)["units"]] == [1, None, 1]
    dom = dump_dom(tmp_path, page.as_uri())
    marked = re.findall(
        r'<article class="unit no-concept" data-layer="[^"]*" data-unit="(\d+)"', dom
    )
    assert marked == ["0", "2"]
    assert dom.count('<span class="badge no-concept">no concept named</span>') == 2


def test_human_descriptions_are_shown_and_larger_images_are_scaled_to_their_masks(tmp_path):
    features = exemplar_features(SIZE, with_images=True, with_descriptions=True)
    big_image = {"bytes": png_bytes(np.kron(stripes_image(0), np.ones((2, 2, 1), np.uint8)))}
    exemplars = datasets.Dataset.from_dict(
        {
            "layer": ["layer4"],
            "unit": [7],
            "ids": [[0, 1]],
            "activations": [[2.0, 1.0]],
            "masks": [np.stack([square_mask(0), square_mask(3)])],
            "threshold": [0.5],
            "dead": [False],
            "images": [[big_image, big_image]],  # 64x64 images for 32x32 masks
            "descriptions": [["dog faces", "the faces of dogs", "animal heads"]],
        },
        features=features,
    )
    page = write_report(exemplars, [], tmp_path / "out", thumbnail_size=40)
    (unit,) = embedded_index(page)["units"]
    assert unit["h"] == ["dog faces", "the faces of dogs", "animal heads"]
    assert unit["d"] is None and unit["a"] == [2.0, 1.0]
    strip = Image.open(page.parent / unit["t"])
    assert strip.size == (2 * 40 + STRIP_GAP, 40)


def test_bad_input_is_refused_with_the_bad_value(tmp_path):
    exemplars = exemplar_set({"layer1": 2}, k=1)
    with pytest.raises(ValueError, match="images"):
        write_report(exemplars.remove_columns("images"), [], tmp_path / "a")
    with pytest.raises(ValueError, match="more than one row for layer 'layer1' unit 1"):
        duplicate = {"layer": "layer1", "unit": 1, "description": "x"}
        write_report(exemplars, [duplicate, duplicate], tmp_path / "b")
    with pytest.raises(ValueError, match="row 0 must be a dict with 'layer' and 'unit'"):
        write_report(exemplars, [{"unit": 1, "description": "x"}], tmp_path / "c")
    with pytest.raises(ValueError, match="page_size must be a positive integer, got 0"):
        write_report(exemplars, [], tmp_path / "d", page_size=0)
    with pytest.raises(ValueError, match="thumbnail_size"):
        write_report(exemplars, [], tmp_path / "e", thumbnail_size=2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        write_report(exemplars, [], tmp_path / "file")


def test_rewrite_replaces_the_report_atomically_and_keeps_other_files(tmp_path):
    output_dir = tmp_path / "describe-output"
    output_dir.mkdir()
    (output_dir / "descriptions.csv").write_text("layer,unit,description\n")
    exemplars = exemplar_set({"layer1": 3}, k=2)
    first = write_report(exemplars, [], output_dir)
    second = write_report(
        exemplars, [{"layer": "layer1", "unit": 0, "description": "new"}], output_dir
    )
    assert first == second == output_dir / "index.html"
    assert (output_dir / "descriptions.csv").exists()
    builds = list((output_dir / "thumbs").iterdir())
    assert len(builds) == 1  # the first report's thumbnails are gone
    assert embedded_index(second)["units"][0]["t"].startswith(f"thumbs/{builds[0].name}/")
    finished = second.read_bytes()

    # A run that fails half way (an undecodable image in the last unit) changes nothing.
    broken = exemplar_set({"layer1": 3}, k=2).to_list()
    broken[-1]["images"] = [{"bytes": b"not an image", "path": None}] * 2
    broken_set = datasets.Dataset.from_list(broken, features=exemplars.features)
    with pytest.raises(Exception, match="cannot identify image"):
        write_report(broken_set, [], output_dir)
    assert second.read_bytes() == finished
    assert list((output_dir / "thumbs").iterdir()) == builds
    assert sorted(path.name for path in output_dir.iterdir()) == [
        "descriptions.csv",
        "index.html",
        "thumbs",
    ]


# --- the page in Chromium ---------------------------------------------------------------------


def run_chromium(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)


def dump_dom(tmp_path: Path, url: str) -> str:
    return run_chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", url).stdout


def rendered_units(dom: str) -> list[tuple[str, int]]:
    return [
        (layer, int(unit))
        for layer, unit in re.findall(
            r'<article class="unit[^"]*" data-layer="([^"]*)" data-unit="(\d+)"', dom
        )
    ]


@needs_chromium
def test_screenshot_shows_the_highlighted_thumbnails(report, tmp_path):
    screenshot = tmp_path / "page.png"
    run_chromium(
        tmp_path,
        "--window-size=1200,900",
        "--virtual-time-budget=3000",
        f"--screenshot={screenshot}",
        report.as_uri(),
    )
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(float)
    assert pixels.shape[:2] == (900, 1200)
    assert pixels.std() > 25  # not a blank page
    # The strips rendered: their yellow outlines and their blue/green stripes are on screen.
    yellow = (np.abs(pixels - np.array(CONTOUR_COLOR, dtype=float)).sum(axis=-1) < 100).sum()
    stripes = ((pixels[..., 2] > 150) & (pixels[..., 0] < 90)).sum()
    assert yellow > 500, yellow
    assert stripes > 20_000, stripes


@needs_chromium
def test_dom_shows_every_unit_with_escaped_text_and_dead_marks(report, tmp_path):
    dom = dump_dom(tmp_path, report.as_uri())
    assert rendered_units(dom) == [("layer1", unit) for unit in range(4)] + [
        ("layer2", unit) for unit in range(5)
    ]
    assert '<h2 class="layer-heading">layer1</h2>' in dom
    assert '<h2 class="layer-heading">layer2</h2>' in dom
    # The hostile description is text in a paragraph, not an element.
    assert (
        '<p class="description">&lt;script&gt;alert(1)&lt;/script&gt; &amp; "double" '
        "'single' &lt;/script&gt;&lt;!-- comment</p>"
    ) in dom
    assert "<script>alert" not in dom
    dead_cards = re.findall(
        r'<article class="unit dead" data-layer="([^"]*)" data-unit="(\d+)"', dom
    )
    assert dead_cards == [("layer2", "4")]
    assert dom.count('<span class="badge">dead</span>') == 1
    assert "<dt>log_p_d</dt><dd>-7.250</dd>" in dom
    assert dom.count('loading="lazy"') == 9


@needs_chromium
def test_url_fragment_fills_the_search_and_layer_filter(report, tmp_path):
    dom = dump_dom(tmp_path, report.as_uri() + "#q=stripes&layer=layer2")
    assert rendered_units(dom) == [("layer2", 0), ("layer2", 2)]  # case-insensitive match
    assert "units 1–2 of 2 matching (9 in all)" in dom

    dom = dump_dom(tmp_path, report.as_uri() + "#q=stripes")
    assert rendered_units(dom) == [("layer1", 1), ("layer2", 0), ("layer2", 2)]

    dom = dump_dom(tmp_path, report.as_uri() + "#q=red%20stripes&dead=hide")
    assert rendered_units(dom) == [("layer1", 1)]

    dom = dump_dom(tmp_path, report.as_uri() + "#layer=layer2&dead=hide&sort=s0:desc")
    assert rendered_units(dom) == [("layer2", 3), ("layer2", 0), ("layer2", 2), ("layer2", 1)]


class DevToolsPipe:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fds 3 and 4)."""

    def __init__(self, tmp_path: Path):
        to_browser_read, self.to_browser = os.pipe()
        self.from_browser, from_browser_write = os.pipe()

        def wire_pipes():
            # Chromium reads commands from fd 3 and writes replies to fd 4.
            low, high = os.dup(to_browser_read), os.dup(from_browser_write)
            os.dup2(low, 3)
            os.dup2(high, 4)

        self.process = subprocess.Popen(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'profile-devtools'}",
                "--remote-debugging-pipe",
                "--window-size=1200,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire_pipes,
            pass_fds=(3, 4),
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
                self.events.append(reply)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.from_browser], [], [], remaining)[0]:
                raise TimeoutError(f"no reply to {method} within {timeout} s")
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buffer += chunk

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        self.session = attached["sessionId"]
        self.send("Page.enable")
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"Boolean({condition})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {condition}")
            time.sleep(0.05)

    def close(self) -> None:
        try:
            self.session = None
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.to_browser)
        os.close(self.from_browser)


UNITS_JS = (
    "Array.from(document.querySelectorAll('article.unit'))"
    ".map(card => card.dataset.layer + '/' + card.dataset.unit)"
)


@needs_chromium
def test_typing_in_the_search_box_filters_units(report, tmp_path):
    browser = DevToolsPipe(tmp_path)
    try:
        browser.open(report.as_uri())
        assert len(browser.evaluate(UNITS_JS)) == 9
        # Every visible thumbnail loaded under the page's Content-Security-Policy.
        browser.wait_for(
            "Array.from(document.images).filter(i => i.getBoundingClientRect().top < innerHeight)"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )

        # Type, as a user would: focus the box and insert text (fires real input events).
        browser.evaluate("document.getElementById('search').focus()")
        browser.send("Input.insertText", {"text": "STRIPES"})
        browser.wait_for("location.hash === '#q=STRIPES'")
        browser.wait_for("document.querySelectorAll('article.unit').length === 3")
        assert browser.evaluate(UNITS_JS) == ["layer1/1", "layer2/0", "layer2/2"]

        # Choose a layer in the select: the filter combines with the search.
        browser.evaluate(
            "const layer = document.getElementById('layer'); layer.value = 'layer1';"
            "layer.dispatchEvent(new Event('change'))"
        )
        assert browser.evaluate(UNITS_JS) == ["layer1/1"]
        assert browser.evaluate("location.hash") == "#q=STRIPES&layer=layer1"

        # Back in the URL: the hash drives the page too.
        browser.evaluate("location.hash = '#q=dog'")
        browser.wait_for("document.querySelectorAll('article.unit').length === 1")
        assert browser.evaluate(UNITS_JS) == ["layer2/1"]
        assert browser.evaluate("document.getElementById('search').value") == "dog"

        # No dialog was ever opened (the hostile description stayed text).
        assert not [e for e in browser.events if e.get("method") == "Page.javascriptDialogOpening"]
    finally:
        browser.close()


# --- thousands of units -----------------------------------------------------------------------


@needs_chromium
def test_thousands_of_units_stay_paginated(tmp_path):
    units_per_layer = 1000
    exemplars = exemplar_set({"conv1": units_per_layer, "conv2": units_per_layer}, k=3)
    descriptions = [
        {"layer": layer, "unit": unit, "description": f"concept number {unit}", "score": -unit / 7}
        for layer in ("conv1", "conv2")
        for unit in range(units_per_layer)
    ]
    started = time.perf_counter()
    page = write_report(exemplars, descriptions, tmp_path / "big", page_size=40)
    seconds = time.perf_counter() - started
    assert seconds < 30, f"writing 2000 units took {seconds:.1f} s"
    assert len(list((tmp_path / "big" / "thumbs").rglob("*.jpg"))) == 2000
    # The page carries a compact index, not 2000 rendered units: about 150 bytes a unit.
    assert page.stat().st_size < 400_000, page.stat().st_size

    started = time.perf_counter()
    dom = dump_dom(tmp_path, page.as_uri())
    assert rendered_units(dom) == [("conv1", unit) for unit in range(40)]
    assert "page 1 of 50" in dom
    assert len(dom) < page.stat().st_size + 100_000  # the DOM holds one page of cards

    dom = dump_dom(tmp_path, page.as_uri() + "#layer=conv2&page=25")
    assert rendered_units(dom) == [("conv2", unit) for unit in range(960, 1000)]
    assert "page 25 of 25" in dom
    dom = dump_dom(tmp_path, page.as_uri() + "#q=number%20999")
    assert rendered_units(dom) == [("conv1", 999), ("conv2", 999)]
    browser_seconds = time.perf_counter() - started
    assert browser_seconds < 45, f"three page loads took {browser_seconds:.1f} s"
