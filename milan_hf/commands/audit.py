"""``milan-hf audit``: count the units whose description matches a query, across models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="find units whose descriptions match a query, per layer, across models",
        description="Count, per layer, the units whose description matches --query (its words, "
        "--words, and/or sentence-embedding similarity >= --threshold) in one or more describe "
        "runs, and write OUTPUT/audit.json and audit.html with the matching units' exemplars.",
    )
    parser.add_argument("describe_dirs", nargs="+", type=Path, help="`milan-hf describe` outputs")
    parser.add_argument("--query", required=True, help='what to look for, e.g. "faces"')
    parser.add_argument("--words", help="more comma-separated words that count as a match")
    parser.add_argument(
        "--threshold",
        type=float,
        help="also match descriptions whose embedding cosine to the query is at least this",
    )
    parser.add_argument(
        "--no-words", action="store_true", help="match by embedding similarity only"
    )
    parser.add_argument("--names", help="comma-separated display names, one per directory")
    parser.add_argument(
        "--output", type=Path, default=Path("milan-hf-audit"), help="output directory"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..application_report import write_audit_page
    from ..audit import audit_describe_outputs
    from ..describer import load_description_outputs

    names = args.names.split(",") if args.names else None
    words = [word.strip() for word in args.words.split(",") if word.strip()] if args.words else []
    result = audit_describe_outputs(
        args.describe_dirs,
        args.query,
        names=names,
        words=words,
        use_words=not args.no_words,
        threshold=args.threshold,
    )
    exemplars = {m.name: load_description_outputs(m.source)[1] for m in result.models}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "audit.json").write_text(json.dumps(result.as_dict(), indent=2))
    page = write_audit_page(result, args.output, exemplars)
    print(result.table())
    print(f"wrote {args.output / 'audit.json'} and {page}")
    return 0
