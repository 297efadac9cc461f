"""The output directory of a describe run: its layout, resuming, and what it may replace.

::

    output_dir/descriptions.csv        layer,unit,description,score,...,dead
    output_dir/descriptions/           the descriptions (datasets.save_to_disk)
    output_dir/exemplars/              the exemplar sets, images materialised (load_exemplars)
    output_dir/index.html + thumbs/    the HTML report (milan_hf.report)
    output_dir/milan_describe.json     the settings of the run, and which report it wrote

Every finished layer (exemplars, then descriptions) is committed under ``output_dir/.state/``
by one directory rename, so rerunning an interrupted run with the same settings redoes only the
layers that had not finished. Overwriting replaces only what milan_hf wrote there
(:func:`milan_hf.staged_output.require_own_output`): a user's own files, a folder of theirs
under ``thumbs/`` or an ``index.html`` it did not write make it refuse, touching nothing.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import datasets

from . import schema
from .exemplar_storage import load_exemplars, save_exemplars
from .run_fingerprint import file_fingerprint, hash_bytes
from .staged_output import (
    foreign_entries,
    remove_stale_staging,
    require_own_output,
    staged_directory,
    staged_file,
    write_text_atomically,
)

CSV_FILE = "descriptions.csv"
DESCRIPTIONS_DIR = "descriptions"
EXEMPLARS_DIR = "exemplars"
RUN_FILE = "milan_describe.json"
STATE_DIR = ".state"
REPORT_FILE = "index.html"
THUMBS_DIR = "thumbs"
# The report writer's own staging folders (milan_hf.report).
_REPORT_STAGING = ".report-*.tmp"


def prepare_output(
    output_dir: Path, settings: dict, layers: list[str], overwrite: bool
) -> tuple[Path, bool]:
    """Check ``output_dir`` against this run; return its state folder and whether the same
    run already finished there.

    A folder from the same settings is resumed (finished layers are reused, even when the run
    now asks for other layers); one from other settings, or holding unrelated files, is an
    error unless ``overwrite``, which replaces what milan_hf wrote there, and only that.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output {str(output_dir)!r} exists and is not a directory")
    state = output_dir / STATE_DIR
    record = {"settings": json_ready(settings), "layers": layers}
    finished = read_json(output_dir / RUN_FILE)
    previous = read_json(state / RUN_FILE) or finished
    same = previous is not None and previous.get("settings") == record["settings"]
    if overwrite and output_dir.is_dir() and any(output_dir.iterdir()):
        _require_own_directory(output_dir, finished)
        for entry in output_dir.iterdir():  # all of it milan_hf's: checked just above
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        same, finished = False, None
    elif not same and output_dir.is_dir() and any(output_dir.iterdir()):
        raise FileExistsError(_mismatch_message(output_dir, previous, record["settings"]))
    elif output_dir.is_dir():  # resuming: the report it rewrites must be milan_hf's own
        _require_own_report(output_dir, finished)
    finished_run = {key: (finished or {}).get(key) for key in record}
    if same and finished_run == record and (output_dir / DESCRIPTIONS_DIR).is_dir():
        return state, True
    state.mkdir(parents=True, exist_ok=True)
    if same and finished is not None and not (state / RUN_FILE).is_file():
        # A finished run asked for other layers: start from its committed results.
        _seed_state_from_outputs(output_dir, state)
    write_text_atomically(state / RUN_FILE, json.dumps(record, indent=2))
    for layer_dir in state.iterdir():  # left by an interrupted commit
        remove_stale_staging(layer_dir)
    return state, False


def _mismatch_message(output_dir: Path, previous: dict | None, settings: dict) -> str:
    if previous is None:
        what = "other files"
    else:
        old = previous.get("settings") or {}
        changed = sorted(key for key in {*old, *settings} if old.get(key) != settings.get(key))
        what = f"the results of other describe settings (different: {', '.join(changed)})"
    return (
        f"{output_dir} holds {what}; choose another output directory or pass overwrite "
        "(--overwrite) to replace it"
    )


def _owned_report(output_dir: Path, finished: dict | None) -> list[str]:
    """The report entries a finished run recorded as its own, if they are unchanged."""
    report = (finished or {}).get("report") or {}
    owned = [_REPORT_STAGING] + [f"{THUMBS_DIR}/{name}" for name in report.get("thumbs", [])]
    index = output_dir / REPORT_FILE
    if index.is_file() and report.get("index") == file_fingerprint(index):
        owned.append(REPORT_FILE)
    return owned


def _require_own_directory(output_dir: Path, finished: dict | None) -> None:
    metadata = RUN_FILE if (output_dir / RUN_FILE).is_file() else f"{STATE_DIR}/{RUN_FILE}"
    owned = [STATE_DIR, DESCRIPTIONS_DIR, EXEMPLARS_DIR, CSV_FILE, RUN_FILE]
    require_own_output(
        output_dir,
        metadata_file=metadata,
        owned=owned + _owned_report(output_dir, finished),
        what="describe output",
    )


def _require_own_report(output_dir: Path, finished: dict | None) -> None:
    owned = _owned_report(output_dir, finished)
    foreign = [
        entry
        for entry in foreign_entries(output_dir, owned)
        if entry.rstrip("/") in (REPORT_FILE, THUMBS_DIR) or entry.startswith(f"{THUMBS_DIR}/")
    ]
    if foreign:
        raise FileExistsError(
            f"{output_dir} holds {', '.join(foreign)}, which milan_hf did not write, where the "
            "report goes; move them away or choose another output directory"
        )


def layer_folder(layer: str) -> str:
    """The state folder of a layer: readable, and unique even when two names sanitise alike."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', layer)}-{hash_bytes(layer.encode())[:8]}"


def commit_layer_exemplars(exemplars: datasets.Dataset, layer_dir: Path) -> None:
    """Commit one layer's exemplars under its state folder (one rename)."""
    layer_dir.mkdir(parents=True, exist_ok=True)
    save_exemplars(exemplars, layer_dir / EXEMPLARS_DIR, overwrite=True)


def commit_layer_descriptions(descriptions: datasets.Dataset, layer_dir: Path) -> None:
    """Commit one layer's descriptions under its state folder (one rename)."""
    save_dataset_atomically(descriptions, layer_dir / DESCRIPTIONS_DIR)


def _seed_state_from_outputs(output_dir: Path, state: Path) -> None:
    exemplars = load_exemplars(output_dir / EXEMPLARS_DIR)
    descriptions = datasets.load_from_disk(str(output_dir / DESCRIPTIONS_DIR))
    for layer in schema.exemplar_metadata(exemplars).get("layers", []):
        layer_dir = state / layer_folder(layer)

        def of_layer(dataset: datasets.Dataset, wanted: str = layer) -> datasets.Dataset:
            return dataset.filter(lambda name: name == wanted, input_columns=schema.LAYER)

        commit_layer_exemplars(of_layer(exemplars), layer_dir)
        commit_layer_descriptions(of_layer(descriptions), layer_dir)


def write_outputs(
    output_dir: Path,
    exemplars: datasets.Dataset,
    descriptions: datasets.Dataset,
    settings: dict,
    report_title: str | None,
) -> None:
    """Write the finished run (``report_title`` None: no report) and drop its state."""
    save_exemplars(exemplars, output_dir / EXEMPLARS_DIR, overwrite=True)
    save_dataset_atomically(descriptions, output_dir / DESCRIPTIONS_DIR)
    write_descriptions_csv(descriptions, output_dir / CSV_FILE)
    metadata = schema.exemplar_metadata(exemplars)
    record: dict[str, Any] = {"settings": json_ready(settings), "layers": metadata["layers"]}
    if report_title is not None:
        from .report import write_report

        index = write_report(exemplars, descriptions, output_dir, title=report_title)
        thumbs = sorted(path.name for path in (output_dir / THUMBS_DIR).iterdir())
        record["report"] = {"index": file_fingerprint(index), "thumbs": thumbs}
    write_text_atomically(output_dir / RUN_FILE, json.dumps(record, indent=2))
    # Everything is committed: the per-layer state is no longer needed.
    shutil.rmtree(output_dir / STATE_DIR, ignore_errors=True)


def write_descriptions_csv(descriptions: datasets.Dataset, path: str | os.PathLike) -> Path:
    """``layer,unit,description`` then the other columns, one row per unit (atomically).
    A score that is not a number (a dead unit's) is an empty cell."""
    path = Path(path)
    first = [schema.LAYER, schema.UNIT, schema.DESCRIPTION]
    columns = first + [name for name in descriptions.column_names if name not in first]
    with staged_file(path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in descriptions.select_columns(columns):
            writer.writerow([_csv_value(row[name]) for name in columns])
    return path


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return "" if value is None else value


def save_dataset_atomically(dataset: datasets.Dataset, target: Path) -> None:
    """``dataset.save_to_disk(target)``, swapped in whole (never half-written)."""
    with staged_directory(target) as staging:
        dataset.save_to_disk(str(staging))


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def json_ready(value: Any) -> Any:
    """Round-trip through JSON so that tuples and lists compare equal."""
    return json.loads(json.dumps(value, default=str))


def load_description_outputs(output_dir: str | os.PathLike) -> tuple[datasets.Dataset, Any]:
    """The descriptions and exemplar sets a finished ``describe(output_dir=...)`` wrote."""
    output_dir = Path(output_dir)
    if not (output_dir / RUN_FILE).is_file() or not (output_dir / DESCRIPTIONS_DIR).is_dir():
        raise FileNotFoundError(f"{output_dir} holds no finished describe run")
    return (
        datasets.load_from_disk(str(output_dir / DESCRIPTIONS_DIR)),
        load_exemplars(output_dir / EXEMPLARS_DIR),
    )
