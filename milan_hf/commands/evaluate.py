"""``milan-hf evaluate``: the paper's table for a captioner, and ground-truth accuracy.

    milan-hf evaluate --captioner DIR_OR_ID --data NAME_OR_DIR --split test \\
        [--held-out NET ...] [--pmi-weights 0,0.1,0.2,0.5,1] [--num-beams 50] \\
        [--output DIR] [--push-to-hub REPO]

Writes ``results.md`` (tables), ``results.json`` (every summary and the settings),
``per_unit/`` (a ``datasets`` dataset: one row per unit and method with the description, its
references, scores and, on the probe world, the unit's known concept and whether the
description names it) and ``model_card.md`` (the captioner's card with the results as
model-index ``EvalResult`` entries), all at once (staged, then renamed into place).
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_OUTPUT = "milan_evaluation"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a captioner's descriptions against references (the paper's table)",
        description="Describe every unit of a split with a captioner under several decoding "
        "settings (p(d|E) greedy, p(d|E) beam, PMI per λ), add the NetDissect-style IoU "
        "baseline where concept masks exist (the probe world), and score them against the "
        "units' reference descriptions (BERTScore F1, BLEU, ROUGE-L, embedding cosine) and, "
        "for units of known meaning, by concept accuracy.",
    )
    parser.add_argument(
        "--captioner", required=True, help="captioner directory or Hub id (with its prior)"
    )
    parser.add_argument(
        "--data",
        required=True,
        help="a MILANNOTATIONS-format directory of sets (e.g. the probe-world corpus), a "
        "datasets save_to_disk directory of exemplar sets with descriptions, or a "
        "MILANNOTATIONS name (a set, grouping or generalisation split; with --data-dir)",
    )
    parser.add_argument("--data-dir", help="where the sets named by --data are (default: download)")
    parser.add_argument("--imagenet-dir", help="ImageNet val folder for ImageNet-sourced sets")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument(
        "--held-out",
        nargs="+",
        metavar="NET",
        help="sets/networks whose units form the test split (default: the held-out networks "
        "of a probe-world corpus, else the within-network split; 'none' forces the latter)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the within-network split")
    parser.add_argument(
        "--pmi-weights",
        default="0,0.1,0.2,0.5,1",
        help="comma-separated λ values; one PMI row per non-zero λ",
    )
    parser.add_argument("--num-beams", type=int, default=50, help="beam width (paper: 50)")
    parser.add_argument(
        "--pmi-strategy",
        choices=("rerank", "token"),
        default="rerank",
        help="rerank the beam by PMI (original) or apply λ·log p(w_t|w_<t) at every step",
    )
    parser.add_argument("--max-length", type=int, help="most tokens per description")
    parser.add_argument("--batch-size", type=int, default=32, help="units per generate call")
    parser.add_argument(
        "--max-units", type=int, help="evaluate a seeded random sample of this many units"
    )
    parser.add_argument(
        "--metrics",
        default="bertscore,bleu,rouge,embedding_cosine",
        help="comma-separated metrics of milan_hf.metrics",
    )
    parser.add_argument(
        "--paper-bertscore",
        action="store_true",
        help="BERTScore as the paper: roberta-large, idf, rescaled (needs the Hub)",
    )
    parser.add_argument("--device", help="torch device (default: cuda when available)")
    parser.add_argument("--output", type=Path, default=Path(DEFAULT_OUTPUT), help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--push-to-hub", metavar="REPO", help="add the results to this model repo's card"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def parse_pmi_weights(text: str) -> list[float]:
    """``"0,0.1,0.2"`` -> ``[0.0, 0.1, 0.2]``; ValueError naming a bad entry."""
    weights = []
    for item in text.split(","):
        try:
            weight = float(item)
        except ValueError:
            raise ValueError(f"--pmi-weights: {item!r} is not a number (in {text!r})") from None
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"--pmi-weights: {item!r} must be a finite number >= 0")
        weights.append(weight)
    return weights


def load_evaluation_data(args: argparse.Namespace):
    """(exemplar rows of the split, probe-world corpus or None, held-out sets, data label)."""
    import datasets

    from ..benchmark import read_probe_world_corpus
    from ..milannotations import GENERALIZATION_SPLITS, load_milannotations

    data = Path(args.data)
    is_dir = args.data_dir is None and data.is_dir()
    if is_dir and (
        (data / "dataset_info.json").is_file() or (data / "dataset_dict.json").is_file()
    ):
        if args.held_out:
            raise ValueError("--held-out needs a MILANNOTATIONS-format directory, not a dataset")
        loaded = datasets.load_from_disk(str(data))
        if isinstance(loaded, datasets.DatasetDict):
            if args.split not in loaded:
                raise ValueError(f"--split {args.split!r} is not in {data}; it has {list(loaded)}")
            loaded = loaded[args.split]
        return loaded, None, [], data.name

    if args.data_dir is None and not is_dir and (data.exists() or _looks_like_path(args.data)):
        raise FileNotFoundError(f"--data {args.data!r} is not a directory")
    name, data_dir = ("all", data) if is_dir else (args.data, args.data_dir)
    corpus = read_probe_world_corpus(data_dir) if data_dir is not None else None
    held_out = args.held_out
    if held_out == ["none"]:
        held_out = None
    elif held_out is None and corpus is not None and corpus.held_out:
        held_out = corpus.held_out
    if name in GENERALIZATION_SPLITS and held_out is not None:
        raise ValueError(f"--data {name!r} already fixes its held-out sets; drop --held-out")
    label = f"{data.name}" if is_dir else args.data
    if data_dir is None or name in GENERALIZATION_SPLITS or args.split not in ("train", "test"):
        exemplars = load_milannotations(
            name,
            data_dir=data_dir,
            imagenet_dir=args.imagenet_dir,
            split=args.split,
            held_out=held_out,
            seed=args.seed,
        )
        return exemplars, corpus, list(held_out or []), label
    exemplars, held_out_sets = _load_split_set_by_set(name, data_dir, held_out, args)
    return exemplars, corpus, held_out_sets, label


def _load_split_set_by_set(name: str, data_dir, held_out, args: argparse.Namespace):
    """The split's rows, read one set at a time: only the sets the split draws from are read.

    The same rows as ``load_milannotations(name, held_out=..., split=...)`` (held-out sets go
    whole to ``test``; a set's within-network split does not depend on its company), but sets
    outside the split may have other mask sizes (the probe-world corpus's EfficientNet).
    """
    import datasets

    from ..milannotations import (
        discover_milannotations,
        load_milannotations,
        resolve_milannotations_name,
    )

    sets = resolve_milannotations_name(name, tuple(discover_milannotations(data_dir)))
    if held_out is None:
        chosen, set_split = sets, args.split
    else:
        held_out_sets = tuple(
            dict.fromkeys(s for n in held_out for s in resolve_milannotations_name(n, sets))
        )
        if not held_out_sets or set(held_out_sets) == set(sets):
            raise ValueError(
                f"--held-out {' '.join(held_out)} must name some but not all of the sets {sets}"
            )
        # Every unit of a set in the split: held-out sets for test, the others for train.
        wanted = args.split == "test"
        chosen = [s for s in sets if (s in held_out_sets) == wanted]
        set_split = "train+test"
    parts = [
        load_milannotations(
            set_name,
            data_dir=data_dir,
            imagenet_dir=args.imagenet_dir,
            split=set_split,
            seed=args.seed,
        )
        for set_name in chosen
    ]
    mask_sizes = {s: p.features["masks"].feature.shape for s, p in zip(chosen, parts)}
    if len(set(mask_sizes.values())) > 1:
        raise ValueError(
            f"The {args.split} split mixes mask sizes {mask_sizes}; evaluate those sets apart "
            "(--data <set> or --held-out)."
        )
    held_out_names = [] if held_out is None else list(held_out_sets)
    return datasets.concatenate_datasets(parts), held_out_names


def run(args: argparse.Namespace) -> int:
    pmi_weights = parse_pmi_weights(args.pmi_weights)
    metrics = _checked_metrics(args)
    output: Path = args.output
    from ..benchmark import decoding_settings, run_benchmark, unit_sample
    from ..evaluation import push_eval_results
    from ..metrics import PAPER_BERTSCORE_SETTINGS

    settings = decoding_settings(pmi_weights, args.num_beams)
    captioner, processor = _load_captioner(args)
    exemplars, corpus, held_out, data_label = load_evaluation_data(args)
    if len(exemplars) == 0:
        raise ValueError(f"split {args.split!r} of {args.data} has no units")
    sample = unit_sample(len(exemplars), args.max_units, args.seed)
    if sample is not None:
        exemplars = exemplars.select(sample)
    metric_kwargs = {"bertscore": PAPER_BERTSCORE_SETTINGS} if args.paper_bertscore else None
    result = run_benchmark(
        captioner,
        processor,
        exemplars,
        settings,
        probe_world=corpus,
        metrics=metrics,
        metric_kwargs=metric_kwargs,
        batch_size=args.batch_size,
        pmi_strategy=args.pmi_strategy,
        max_length=args.max_length,
        progress=not args.quiet,
    )
    split_label = args.split + (f" (held out: {', '.join(held_out)})" if held_out else "")
    metadata = {
        "title": f"{args.captioner} on {data_label}, {split_label}",
        "captioner": args.captioner,
        "data": args.data,
        "split": args.split,
        "held_out": held_out,
        "max_units": args.max_units,
        **result.metadata,
        "notes": _notes(args, result.metadata.get("probe_world", {})),
    }
    _write_evaluation(output, args, result, metadata, data_label, held_out)
    print((output / "results.md").read_text())
    if args.push_to_hub:
        push_eval_results(
            args.push_to_hub,
            result.rows,
            dataset_name=data_label,
            dataset_split=args.split,
            dataset_config=",".join(held_out) or None,
        )
        print(f"Added the results to the model card of {args.push_to_hub}.")
    print(f"Wrote {output}/results.md, results.json, per_unit/ and model_card.md.")
    return 0


def _checked_metrics(args: argparse.Namespace) -> list[str]:
    """The ``--metrics`` to compute, once every option is checked before anything loads."""
    metrics = [name.strip() for name in args.metrics.split(",") if name.strip()]
    from ..metrics import METRICS

    unknown = [name for name in metrics if name not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"--metrics: unknown {unknown or metrics}; choose from {list(METRICS)}")
    for name, value in (("--batch-size", args.batch_size), ("--num-beams", args.num_beams)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if args.output.exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
    captioner_path = Path(args.captioner)
    if not captioner_path.is_dir() and (
        captioner_path.exists() or _looks_like_path(args.captioner)
    ):
        # Anything else ("user/model") is a Hub id.
        raise FileNotFoundError(f"--captioner {args.captioner!r} is not a directory")
    return metrics


def _load_captioner(args: argparse.Namespace):
    """The ``--captioner`` model (on ``--device``, in eval mode) and its processor."""
    import torch

    from ..modeling_milan import MilanCaptionerModel
    from ..processing_milan import MilanProcessor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        captioner = MilanCaptionerModel.from_pretrained(args.captioner).to(device).eval()
        processor = MilanProcessor.from_pretrained(args.captioner)
    except OSError as error:
        raise FileNotFoundError(f"--captioner {args.captioner!r} did not load: {error}") from None
    return captioner, processor


def _write_evaluation(
    output: Path,
    args: argparse.Namespace,
    result,
    metadata: dict,
    data_label: str,
    held_out: list[str],
) -> None:
    """results.json, per_unit/, results.md and model_card.md, swapped in at once."""
    from ..benchmark import results_markdown
    from ..evaluation import add_eval_results_to_card, save_evaluation
    from ..staged_output import staged_directory

    # Stage everything, then swap it in: an interrupted run leaves nothing that looks complete.
    with staged_directory(output) as staging:
        save_evaluation(staging, result.rows, result.per_unit, metadata, overwrite=True)
        (staging / "results.md").write_text(results_markdown(result.rows, metadata))
        card = add_eval_results_to_card(
            _captioner_card(args.captioner),
            result.rows,
            dataset_name=data_label,
            dataset_split=args.split,
            dataset_config=",".join(held_out) or None,
            model_name=Path(args.captioner).name or args.captioner,
        )
        (staging / "model_card.md").write_text(str(card))


def _looks_like_path(text: str) -> bool:
    # "alexnet/imagenet" and "user/model" are names; "/data/x", "./x", "~/x" are paths.
    return text.startswith(("/", ".", "~"))


def _notes(args: argparse.Namespace, probe_world: dict) -> list[str]:
    notes = []
    if args.paper_bertscore:
        notes.append("BERTScore: roberta-large, idf, baseline-rescaled (the paper's setting).")
    else:
        notes.append(
            "BERTScore: local all-MiniLM-L6-v2, raw F1 (not rescaled): NOT on the paper's scale; "
            "compare rows with each other, not with the paper's numbers."
        )
    notes.append(
        "BLEU is corpus BLEU (0-100; 0 when descriptions are shorter than 4 words); sentence "
        "BLEU is the mean per-unit score."
    )
    notes.append(
        f"Decoding: beam {args.num_beams}, PMI by {args.pmi_strategy}; λ=0 is the p(d|E) beam row."
    )
    if probe_world.get("skipped"):
        notes.append(f"No NetDissect row or accuracy: {probe_world['skipped']}.")
    elif probe_world:
        notes.append(
            "Probe world: the references are the IoU annotator's phrasings, so the NetDissect "
            "(IoU) row names the reference concept by construction: a ceiling, not a baseline."
        )
        notes.append(
            "Accuracy: the description names the unit's concept (planted units: by "
            "construction; IoU-labelled: the annotator's expression), by the known-unit "
            "benchmark's rule (milan_hf.probe_world.phrasing.expression_named: a concept's "
            "word or a grammar synonym; AND and OR need both parts)."
        )
    return notes


def _captioner_card(captioner: str):
    from huggingface_hub import ModelCard

    readme = Path(captioner) / "README.md"
    if readme.is_file():
        return ModelCard.load(readme)
    return ModelCard(f"---\nlibrary_name: milan-hf\n---\n\n# {Path(captioner).name}\n")
