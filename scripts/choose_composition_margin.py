"""Where verification's replacement margin comes from: gains on validation units.

    python scripts/choose_composition_margin.py                 # 120 units of seed 500000
    python scripts/choose_composition_margin.py --units 240 --json gains.json

Runs MILAN + verification (top 5 hypotheses, rerank, the concept survey and the final
comparison) on synthetic units of the *validation* seed (never the benchmark's, whose seeds
start at 1000000) with no margin, and prints, per unit where a rival of the reranked choice
was checked, its contrastive AUC gain over the choice and whether taking it makes the
description right. ``faithfulness.COMPOSITION_MARGIN`` must stay below every gain that makes a
description right and should sit above ties and render noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from milan_hf.describer import load_captioner
from milan_hf.faithfulness import COMPOSITION_MARGIN
from milan_hf.known_units import _parse_expression, _states_exactly, verification_synthetic
from milan_hf.probe_world import phrasing
from milan_hf.text_to_image import ProbeWorldTextToImage

VALIDATION_SEED = 500_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=120, help="validation units (default 120)")
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED)
    parser.add_argument("--captioner", help="captioner dir or Hub id (default: the embedded one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the gains here")
    args = parser.parse_args(argv)
    if args.seed >= 1_000_000:
        parser.error(f"--seed {args.seed} is a benchmark seed; validation seeds are below 1000000")
    torch.set_num_threads(args.threads)
    captioner, processor = load_captioner(args.captioner)
    settings = {"top": 5, "num_images": 16, "weight": 1.0, "image_size": 128, "margin": -1.0}
    rows, _ = verification_synthetic(captioner, processor, args.units, args.seed, settings,
                                     ProbeWorldTextToImage())  # fmt: skip
    gains = []
    for row in rows:
        if row["best_composition"] is None:
            continue
        expression = _parse_expression(row["concept"])
        gains.append({
            "concept": row["concept"],
            "choice_right": row["rerank_correct"],
            "choice_exact": row["rerank_exact"],
            "rival": row["best_composition"],
            "rival_right": phrasing.expression_named(row["best_composition"], expression),
            "rival_exact": _states_exactly(row["best_composition"], expression),
            "gain": row["composition_gain"],
        })  # fmt: skip
    gains.sort(key=lambda g: g["gain"])
    print("| gain | unit's concept | choice right | rival | rival right | rival exact |")
    print("|---:|---|---|---|---|---|")
    for g in gains:
        print(f"| {g['gain']:+.3f} | {g['concept']} | {g['choice_right']} | {g['rival']} | "
              f"{g['rival_right']} | {g['rival_exact']} |")  # fmt: skip
    fixes = [g["gain"] for g in gains if (g["rival_right"] and not g["choice_right"])
             or (g["rival_exact"] and not g["choice_exact"])]  # fmt: skip
    harms = [g["gain"] for g in gains if (g["choice_right"] and not g["rival_right"])
             or (g["choice_exact"] and not g["rival_exact"])]  # fmt: skip
    # A tie (gain 0) is no evidence either way: no margin takes it.
    ties = sum(g["gain"] <= 0 for g in gains)
    fixes = [gain for gain in fixes if gain > 0]
    print(f"\n{len(rows)} units, {len(gains)} with a rival checked ({ties} no better than the "
          f"choice); smallest gain of a rival that makes the description right or exact: "
          f"{min(fixes, default=float('nan')):.3f}; largest gain of a rival that makes it wrong "
          f"or inexact: {max(harms, default=float('nan')):.3f}; COMPOSITION_MARGIN = "
          f"{COMPOSITION_MARGIN}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(gains, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
