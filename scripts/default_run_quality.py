"""How the default run's descriptions read: filler share, defects, repetition.

    milan-hf describe                                   # writes ./milan-hf-output
    python scripts/default_run_quality.py               # judges ./milan-hf-output
    python scripts/default_run_quality.py --run DIR --json quality.json

Reads ``descriptions.csv`` of a finished ``milan-hf describe`` run (dead units left out) and
prints ``milan_hf.default_run.description_quality`` as a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from milan_hf.default_run import DEFAULT_OUTPUT_DIR, description_quality


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path(DEFAULT_OUTPUT_DIR), help="run directory")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    path = args.run / "descriptions.csv"
    if not path.is_file():
        parser.error(f"{path} does not exist: run 'milan-hf describe --output {args.run}' first")
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("dead", "False") != "True"]
    quality = description_quality([row["description"] for row in rows])
    print("| measure | value |\n|---|---:|")
    for key, value in quality.items():
        if key != "defective_examples":
            print(f"| {key} | {value} |")
    for text, defects in quality["defective_examples"].items():
        print(f"defective: {text!r}: {', '.join(defects)}")
    if args.json:
        args.json.write_text(json.dumps(quality, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
