"""``milan-hf describe``: exemplars → natural-language descriptions of every unit, with a report.

With no arguments it runs the embedded default offline (EfficientNet-Lite0 on probe-world
scenes and scikit-image photographs, described by the captioner shipped in the package).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .exemplars import add_extraction_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "describe",
        help="describe every unit of some layers in natural language (MILAN)",
        description="Describe every unit of some layers of a vision model: top-k exemplars, "
        "then the captioner's PMI decoding. Writes OUTPUT/descriptions.csv, the descriptions "
        "and exemplar sets as datasets, and OUTPUT/index.html. Rerunning an interrupted run "
        "with the same settings resumes it. With no --model, runs the embedded offline "
        "default: ImageNet EfficientNet-Lite0 on probe-world scenes and real photographs.",
    )
    add_extraction_arguments(
        parser, required=False, model_default="; default: the embedded EfficientNet-Lite0 demo"
    )
    parser.add_argument(
        "--captioner",
        help="captioner directory or Hub id (default: the captioner embedded in milan_hf)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="output directory (default: ./milan-hf-output for the embedded demo)",
    )
    parser.add_argument(
        "--pmi-weight",
        type=float,
        help="λ in log p(d|E) − λ·log p(d) (default: the captioner's, 0.2; 0: p(d|E) alone)",
    )
    parser.add_argument(
        "--pmi-strategy", choices=("rerank", "token"), help="PMI by reranking the beam or per token"
    )
    parser.add_argument("--num-beams", type=int, help="beam width (default: the captioner's)")
    parser.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        help="no n-gram of this size twice in a description (default: the captioner's, 3; "
        "0: off, as the original)",
    )
    parser.add_argument(
        "--allow-repeated-words",
        action="store_true",
        help="decode without the rule against repeated words and dangling phrases (on by "
        "default in the embedded captioner; the original decoding had no such rule)",
    )
    parser.add_argument(
        "--max-units",
        type=int,
        help="describe only units 0..N-1 of each layer (default: every unit)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images per forward pass, units per decode"
    )
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="publish the descriptions and exemplars (images materialised) as a dataset repo",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output directory holding other results instead of refusing",
    )
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    _add_verification_arguments(parser)
    add_dissect_arguments(parser)
    parser.set_defaults(func=run)


def _add_verification_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="check every description against its unit: render it (probe world or diffusers), "
        "run the model on the images and on controls, report the AUC (faithfulness_auc) and "
        "the mean activation ratio (default: on for the embedded default, where rendering is "
        "cheap; off with --model)",
    )
    parser.add_argument(
        "--verify-rerank",
        type=int,
        default=0,
        metavar="N",
        help="MILAN + verification: choose among the top N candidates of the PMI beam by "
        "PMI rank + activation rank (implies --verify; default 0: keep the PMI choice)",
    )
    parser.add_argument(
        "--verify-compose",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --verify-rerank, also check hypotheses no candidate states ('a or b' of the "
        "two most faithful single concepts, the operands alone of an AND and, in the probe "
        "world, what the concept survey points to: 'a or b', 'a in <region>'); the most faithful "
        "candidate or hypothesis replaces the reranked choice when its contrastive AUC is above "
        "it by more than 0.05 (default: on)",
    )
    parser.add_argument(
        "--text-to-image",
        help="text-to-image stage of --verify and of --method dissect: probe-world "
        "(offline), 'diffusers' or a diffusers model id (default: probe-world; diffusers, "
        "Stable Diffusion v1.5, for --method dissect with --model)",
    )
    parser.add_argument(
        "--verify-filler",
        type=int,
        default=5,
        metavar="N",
        help="when PMI chooses a no-concept description ('no clear pattern'), check the top N "
        "concept candidates of the beam, then (probe world) the concept survey's best concept; "
        "the most faithful with AUC >= 0.75 replaces it (default 5; 0 keeps fillers unchecked)",
    )
    parser.add_argument(
        "--verify-images",
        type=int,
        default=16,
        help="images per description for --verify, and as many controls (default 16: with 8, "
        "faithfulness separated right from wrong descriptions less well)",
    )


def _verification(args: argparse.Namespace, default_on: bool):
    """The ``verify`` argument of describe: False, or the settings the flags ask for."""
    from ..faithfulness import VerificationSettings

    if args.verify_rerank < 0:
        raise ValueError(f"--verify-rerank must be 0 or >= 2, got {args.verify_rerank}")
    if args.verify_filler < 0:
        raise ValueError(f"--verify-filler must be >= 0, got {args.verify_filler}")
    wanted = args.verify if args.verify is not None else default_on or args.verify_rerank > 0
    if args.verify is False and args.verify_rerank:
        raise ValueError("--verify-rerank needs verification; drop --no-verify")
    if not wanted:
        return False
    return VerificationSettings(
        text_to_image=args.text_to_image or "probe-world",
        num_images=args.verify_images,
        rerank_top=args.verify_rerank,
        filler_top=args.verify_filler,
        compose=args.verify_compose,
    )


def add_dissect_arguments(parser: argparse.ArgumentParser) -> None:
    """``--method`` and the models of Describe-and-Dissect (milan_hf.dissect)."""
    group = parser.add_argument_group("Describe-and-Dissect (--method dissect)")
    group.add_argument(
        "--method",
        choices=("milan", "dissect"),
        default="milan",
        help="milan: the captioner's PMI decoding (default); dissect: Describe-and-Dissect "
        "(crops → captions → LM candidates → images → the candidate the unit fires on)",
    )
    group.add_argument(
        "--image-captioner",
        help="image-to-text Hub id, or 'embedded' for the embedded captioner's beam as "
        "candidates (default: Salesforce/blip-image-captioning-base with --model; 'embedded' "
        "for the embedded demo, offline)",
    )
    group.add_argument(
        "--summarizer", help="instruction-tuned causal LM id (default: Qwen/Qwen2.5-0.5B-Instruct)"
    )
    group.add_argument("--clip", help="CLIP id for image similarity in the scoring (default: off)")
    group.add_argument("--dissect-candidates", type=int, help="candidate concepts per unit (5)")
    group.add_argument("--dissect-images", type=int, help="images per candidate (8)")


def dissect_settings(args: argparse.Namespace, offline: bool):
    """The DissectSettings the flags ask for (None for --method milan)."""
    flags = {"image_captioner": args.image_captioner, "summarizer": args.summarizer,
             "text_to_image": args.text_to_image, "clip": args.clip,
             "num_candidates": args.dissect_candidates,
             "images_per_candidate": args.dissect_images}  # fmt: skip
    if args.method != "dissect":  # --text-to-image also serves --verify
        given = [f"--{name.replace('_', '-')}" for name, value in flags.items()
                 if value and name != "text_to_image"]  # fmt: skip
        if given:
            raise ValueError(f"{', '.join(given)} need(s) --method dissect")
        return None
    from ..dissect import DissectSettings

    given = {name: value for name, value in flags.items() if value is not None}
    settings = DissectSettings.offline(**given) if offline else DissectSettings(**given)
    return settings.check()


def run(args: argparse.Namespace) -> int:
    from ..describer import (
        DEFAULT_OUTPUT_DIR,
        describe,
        describe_default,
        load_description_outputs,
        push_descriptions_to_hub,
    )
    from ..staged_output import check_output_location

    common = {
        "captioner": args.captioner,
        "k": args.k,
        "quantile": args.quantile,
        "pmi_weight": args.pmi_weight,
        "pmi_strategy": args.pmi_strategy,
        "num_beams": args.num_beams,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "no_repeat_words": False if args.allow_repeated_words else None,
        "batch_size": args.batch_size,
        "overwrite": args.overwrite,
        "report": not args.no_report,
        "method": args.method,
        "dissect": dissect_settings(args, offline=args.model is None),
    }
    if args.max_units is not None:
        if args.max_units < 1:
            raise ValueError(f"--max-units must be a positive integer, got {args.max_units}")
        common["units"] = args.max_units
    if args.model is None:
        unused = [
            f"--{name.replace('_', '-')}"
            for name in ("layers", "images", "checkpoint", "split", "image_column")
            if getattr(args, name) is not None
        ]
        if unused or args.pretrained:
            raise ValueError(
                f"{', '.join(unused + (['--pretrained'] if args.pretrained else []))} need(s) "
                "--model; without --model the embedded default model and images are used"
            )
        output = check_output_location(args.output or DEFAULT_OUTPUT_DIR, flag="--output")
        print(
            "describing EfficientNet-Lite0 (ImageNet weights) on probe-world scenes and "
            "scikit-image photographs with the embedded captioner",
            file=sys.stderr,
        )
        descriptions = describe_default(output, verify=_verification(args, True), **common)
    else:
        missing = [
            f"--{name}" for name in ("layers", "images", "output") if getattr(args, name) is None
        ]
        if missing:
            raise ValueError(f"--model needs {', '.join(missing)} as well")
        inputs = [args.images, args.model, args.checkpoint, args.captioner]
        output = check_output_location(args.output, inputs, flag="--output")
        descriptions = describe(
            args.model,
            args.layers,
            args.images,
            output_dir=output,
            checkpoint=args.checkpoint,
            pretrained=args.pretrained,
            image_column=args.image_column,
            split=args.split,
            seed=args.seed,
            verify=_verification(args, False),
            **common,
        )
    if args.push_to_hub:
        _, exemplars = load_description_outputs(output)
        push_descriptions_to_hub(
            descriptions, exemplars, args.push_to_hub, captioner=args.captioner
        )
        print(f"pushed descriptions and exemplars to the dataset repo {args.push_to_hub}")
    layers = list(dict.fromkeys(descriptions["layer"]))
    print(f"described {len(descriptions)} units of {len(layers)} layer(s) ({', '.join(layers)})")
    print(f"descriptions: {output / 'descriptions.csv'}")
    if not args.no_report:
        print(f"report: {(output / 'index.html').resolve()}")
    return 0
