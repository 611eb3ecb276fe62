"""`cir eval` and `cir synthetic-dataset`: their arguments and what they run.

The `cir` registry (cir_tools.cli) imports this module only when one of the two runs, through
`cir_tools.commands.eval` and `cir_tools.commands.synthetic_dataset`, which dispatch to `run` and
`write_synthetic`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cir.common.v1 import common_pb2
from cir.retriever.v1 import retriever_pb2
from cir_evaluation.datasets import DatasetError
from cir_evaluation.evaluate import EvalConfig, evaluate
from cir_evaluation.model import DatasetName, Split
from cir_evaluation.runner import EvalRunError, SuiteStarter, print_echo
from cir_retriever.presets import Preset
from cir_retriever.strategies import InstructCirVariant, StrategyName

_WEIGHTS = ("alpha", "beta", "gamma", "weimocir_a", "weimocir_b")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=[d.value for d in DatasetName])
    parser.add_argument("--root", required=True, help="the dataset folder in its official layout")
    parser.add_argument("--split", default="val", choices=[s.value for s in Split])
    parser.add_argument("--out", required=True, help="run folder: metrics, rankings, report, caches")
    parser.add_argument("--strategy", default="cvsi", choices=[s.value for s in StrategyName])
    parser.add_argument(
        "--preset", default=None, choices=[p.value for p in Preset], help="default: the dataset's own"
    )
    for name in _WEIGHTS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=None, help="weight override")
    parser.add_argument("--edit-mode", choices=["per_caption", "joined"], default=None)
    parser.add_argument("--score", choices=["dot", "cosine"], default=None, help="CVSI score function")
    parser.add_argument("--weimocir-variant", choices=["coded", "paper"], default=None)
    parser.add_argument(
        "--instructcir-variant",
        choices=[v.value for v in InstructCirVariant],
        default=None,
        help="instructcir query: plain, or fused with the text embedding (Eq. 3)",
    )
    parser.add_argument(
        "--ldre-form",
        choices=["mean", "weighted"],
        default=None,
        help="LDRE query form (default: the preset's: weighted = adaptive slot weights on CIRCO)",
    )
    parser.add_argument(
        "--address", default=None, help="a running retriever (host:port); default: start a local suite"
    )
    parser.add_argument("--profile", default=None, help="profile TOML for a local suite (default: tiny pack)")
    parser.add_argument("--collection-prefix", default="eval")
    parser.add_argument("--concurrency", type=int, default=4, help="queries in flight (default 4)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per-query deadline in seconds")
    parser.add_argument("--max-queries", type=int, default=None, help="only the first N queries")
    parser.add_argument(
        "--rescore-only", action="store_true", help="no model calls: score from the cache in --out"
    )
    parser.add_argument(
        "--sweep",
        default=None,
        help="re-score a grid from the cache, e.g. alpha=0:1:0.1,beta=0:1:0.1 (writes a table + heatmap)",
    )
    parser.add_argument("--report-top-k", type=int, default=10)
    parser.add_argument(
        "--report-max-queries", type=int, default=200, help="queries shown in report.html (0: all)"
    )


def _options(args: argparse.Namespace) -> retriever_pb2.StrategyOptions:
    options = retriever_pb2.StrategyOptions()
    if args.edit_mode:
        options.edit_mode = common_pb2.EditMode.Value(f"EDIT_MODE_{args.edit_mode.upper()}")
    if args.score:
        options.score_function = retriever_pb2.ScoreFunction.Value(f"SCORE_FUNCTION_{args.score.upper()}")
    if args.weimocir_variant:
        options.weimocir_variant = retriever_pb2.WeiMoCirVariant.Value(
            f"WEI_MO_CIR_VARIANT_{args.weimocir_variant.upper()}"
        )
    if args.instructcir_variant:
        options.instructcir_variant = retriever_pb2.InstructCirVariant.Value(
            f"INSTRUCT_CIR_VARIANT_{args.instructcir_variant.upper()}"
        )
    return options


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        dataset=DatasetName(args.dataset),
        root=Path(args.root),
        split=Split(args.split),
        out=Path(args.out),
        strategy=StrategyName(args.strategy),
        preset=Preset(args.preset) if args.preset else None,
        weights={n: getattr(args, n) for n in _WEIGHTS if getattr(args, n) is not None},
        options=_options(args),
        ldre_form=args.ldre_form,
        address=args.address,
        profile=Path(args.profile) if args.profile else None,
        collection_prefix=args.collection_prefix,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        max_queries=args.max_queries,
        rescore_only=args.rescore_only,
        sweep=args.sweep,
        report_top_k=args.report_top_k,
        report_max_queries=args.report_max_queries or None,
    )


def run(args: argparse.Namespace, start_suite: SuiteStarter | None = None) -> int:
    """Run `cir eval`; without --address, `start_suite` (the `cir` command passes a local suite) serves it."""
    config = config_from_args(args)
    try:
        summary = evaluate(config, print_echo, start_suite)
    except (DatasetError, EvalRunError, ValueError) as error:
        print(f"cir eval: {error}", file=sys.stderr, flush=True)
        return 2 if isinstance(error, DatasetError | ValueError) else 1
    shown = {k: summary[k] for k in ("metrics", "submissions", "service_agreement", "sweep") if k in summary}
    print(json.dumps(shown, indent=2))
    written = ("metrics.json", "rankings.jsonl", "report.html")
    print("written: " + ", ".join(str(config.out / name) for name in written))
    return 0


def add_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=[d.value for d in DatasetName])
    parser.add_argument("--split", default="val", choices=[s.value for s in Split])
    parser.add_argument("--out", required=True, help="dataset root to write (pass it to cir eval --root)")
    parser.add_argument("--gallery-size", type=int, default=12)
    parser.add_argument("--queries", type=int, default=4)


def write_synthetic(args: argparse.Namespace) -> int:
    from cir_evaluation.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(
        DatasetName(args.dataset),
        Path(args.out),
        Split(args.split),
        gallery_size=args.gallery_size,
        num_queries=args.queries,
    )
    print(f"{args.dataset} {args.split} (synthetic, {args.gallery_size} images) written to {root}")
    return 0
