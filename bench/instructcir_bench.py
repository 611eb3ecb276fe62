"""InstructCIR on the world: triplets from an unannotated catalog, CPU training, served quality and scaling.

  .venv/bin/python bench/instructcir_bench.py --out bench/results/instructcir.json

Uses the world pack (`--pack`, default the shared cache: `cir models world` builds it), starts the suite
on it and runs `cir_tools.world.instructcir_proof`: indexes a catalog of train-scene families (images and a
family id only), generates triplets with the pack's captioner and LLM (pairs within a family), trains
InstructCIR on the world CLIP on growing prefixes of the triplet file (the largest with the Eq. 3 fusion
stage), serves each checkpoint and evaluates it on the world's heldout CIRR-layout val split (and
FashionIQ-layout val for the largest) next to image_only, text_only, lincir and cvsi.

Keys (issue 18):
- `quality{strategy: {metric: value}}`: percent on the CIRR-layout val split: instructcir, instructcir_fused,
  image_only, text_only, lincir, cvsi; `recall_at_1`, `recall_at_10` (and the other recalls measured). With
  the recipe's residual variant (docs/instructcir.md; `--no-residual-query` trains the paper's network
  throughout), also `instructcir_paper_network`: the paper's network, plain, on the largest triplet file.
- `scaling[]`: {`triplets`, `recall_at_1`, `recall_at_10`} per training run (triplets = lines of its file).
- `train_s`: seconds of the largest plain run's training; `train_s_by_triplets{}` for every run (`fused`: the
  largest with the Eq. 3 stage, which the `instructcir_fused` rows serve).
Also: `quality_fashioniq{}`, `triplets_s`, `triplet_outcomes{}`, `triplet_examples[]`, `catalog_images`,
`training_metrics[]` (the fused run's, per epoch: train and held-out loss, held-out recalls), the SVG of the
curve (`scaling_svg`, a path), and `quality_answer_key{}`: the same plain training on the catalog's answer key
(the generator's own texts for base -> variant pairs), a diagnostic of what the triplets' texts cost.

The triplets' texts come from the world's triplet LLM (`cir_tools.packs.world_stages.triplet_llm_stage`),
served by the suite's reasoner while the job runs; cvsi and the other rows use the pack's serving LLM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cir_client.retriever import connect
from cir_evaluation.model import DatasetName, Split
from cir_tools.local_suite import LocalSuite
from cir_tools.packs.world import build_world_pack, default_pack_dir
from cir_tools.termination import exit_on_sigterm
from cir_tools.world import instructcir_proof as proof
from cir_tools.world.datasets import write_world_dataset
from cir_tools.world.quality import INSTRUCTCIR_ROWS, QUALITY_ROWS, markdown_table, quality_table

BASELINE_ROWS = tuple(r for r in QUALITY_ROWS if r.label in ("image_only", "text_only", "lincir", "cvsi"))
METRICS = ("recall_at_1", "recall_at_5", "recall_at_10", "recall_subset_at_1")
FASHIONIQ_METRICS = ("average_r_at_10", "average_r_at_50")
# With the recipe's residual variant, the paper's own network trained on the same triplets, for comparison.
PAPER_NETWORK_ROW = "instructcir_paper_network"


def main() -> None:
    exit_on_sigterm()  # a killed bench still stops the processes it started
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="JSON file to write (the SVG goes beside it)")
    parser.add_argument("--pack", default=None, help="world pack folder (default: the shared cache)")
    parser.add_argument("--families", type=int, default=proof.ProofRecipe.families)
    parser.add_argument("--triplets", type=int, default=proof.ProofRecipe.triplets)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    parser.add_argument(
        "--residual-query",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the network's residual variant (docs/instructcir.md); default: the recipe's",
    )
    parser.add_argument("--scaling-points", type=int, default=4)
    parser.add_argument("--gallery-size", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--no-fashioniq", action="store_true")
    args = parser.parse_args()

    recipe = proof.ProofRecipe(families=args.families, triplets=args.triplets)
    overrides = {"epochs": args.epochs, "residual_query": args.residual_query}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    recipe = dataclasses.replace(recipe, training=dataclasses.replace(recipe.training, **overrides))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {"recipe": _jsonable(dataclasses.asdict(recipe))}

    with tempfile.TemporaryDirectory(prefix="instructcir-bench-") as scratch:
        work = Path(scratch)
        pack = Path(args.pack) if args.pack else default_pack_dir()
        profile = build_world_pack(pack)
        triplet_llm = proof.build_triplet_llm(pack)
        cirr = write_world_dataset(
            DatasetName.CIRR,
            work / "cirr",
            Split.VAL,
            gallery_size=args.gallery_size,
            num_queries=args.queries,
        )
        fashioniq = None
        if not args.no_fashioniq:
            fashioniq = write_world_dataset(
                DatasetName.FASHIONIQ, work / "fashioniq", Split.VAL, num_queries=args.queries
            )
        suite = LocalSuite(profile=profile, workdir=work / "suite")
        suite.start(timeout_s=900)
        try:
            # 1-2: the catalog and its triplets.
            catalog = work / "catalog"
            proof.write_world_catalog(catalog, recipe)
            stub = connect(suite.retriever_address)
            result["catalog_images"] = proof.ingest_catalog(stub, proof.CATALOG_COLLECTION, catalog)
            triplets = work / "triplets.jsonl"
            proof.serve_reasoner(suite, triplet_llm)
            started = time.perf_counter()
            report = proof.generate_triplets(
                suite, proof.CATALOG_COLLECTION, triplets, recipe, _progress("triplets")
            )
            result["triplets_s"] = round(time.perf_counter() - started, 1)
            proof.serve_reasoner(suite, None)  # the serving LLM again, for cvsi
            result["triplet_examples"] = triplets.read_text(encoding="utf-8").splitlines()[:8]
            result["triplet_outcomes"] = dict(report.outcomes)
            print(f"triplets: {report.written} in {result['triplets_s']} s, outcomes {dict(report.outcomes)}")

            # Baselines (the encoder serves no checkpoint yet; their collection is shared).
            quality = quality_table(suite.retriever_address, cirr, work / "eval", BASELINE_ROWS, echo=print)
            quality_fashioniq = {}
            if fashioniq is not None:
                quality_fashioniq = quality_table(
                    suite.retriever_address,
                    fashioniq,
                    work / "eval-fiq",
                    BASELINE_ROWS,
                    dataset=DatasetName.FASHIONIQ,
                    echo=print,
                )

            # 3-4: a model per prefix of the triplet file, each served and evaluated.
            counts = proof.scaling_counts(_lines(triplets), args.scaling_points)
            scaling, train_s, training_metrics = [], {}, []
            # The curve and the plain rows come from runs without the Eq. 3 stage: that stage retrains the
            # predictor for the fused query, so the plain query of a fused checkpoint is not the plain model.
            plain_settings = dataclasses.replace(recipe.training, fusion=False)
            for count in counts:
                largest = count == counts[-1]
                subset = proof.first_triplets(triplets, count, work / f"triplets-{count}.jsonl")
                started = time.perf_counter()
                run = proof.train(profile, subset, work / f"model-{count}", plain_settings, log=print)
                train_s[count] = round(time.perf_counter() - started, 1)
                proof.serve_checkpoint(suite, run.checkpoint)
                table = quality_table(
                    suite.retriever_address,
                    cirr,
                    work / f"eval-{count}",
                    INSTRUCTCIR_ROWS[:1],
                    echo=print,
                    collection_prefix=f"ic{count}",
                )
                if largest:
                    started = time.perf_counter()
                    run = proof.train(profile, subset, work / "model-fused", recipe.training, log=print)
                    train_s["fused"] = round(time.perf_counter() - started, 1)
                    proof.serve_checkpoint(suite, run.checkpoint)
                    table |= quality_table(
                        suite.retriever_address,
                        cirr,
                        work / "eval-fused",
                        INSTRUCTCIR_ROWS[1:],
                        echo=print,
                        collection_prefix="ic-fused",
                    )
                plain = table["instructcir"]
                scaling.append(
                    {
                        "triplets": count,
                        "train_triplets": run.train_triplets,
                        "recall_at_1": plain["recall_at_1"],
                        "recall_at_10": plain["recall_at_10"],
                    }
                )
                if largest:
                    quality = {**table, **quality}
                    training_metrics = run.metrics
                    if fashioniq is not None:  # the fused checkpoint is the one served now
                        quality_fashioniq |= quality_table(
                            suite.retriever_address,
                            fashioniq,
                            work / "eval-fiq-fused",
                            INSTRUCTCIR_ROWS[1:],
                            dataset=DatasetName.FASHIONIQ,
                            echo=print,
                            collection_prefix="ic-fused",
                        )
                if largest and recipe.training.residual_query:
                    # The paper's network (random predictor, Xavier cross-attention) on the same triplets.
                    paper = dataclasses.replace(plain_settings, residual_query=False)
                    started = time.perf_counter()
                    paper_run = proof.train(profile, subset, work / "model-paper", paper, log=print)
                    train_s["paper_network"] = round(time.perf_counter() - started, 1)
                    proof.serve_checkpoint(suite, paper_run.checkpoint)
                    paper_table = quality_table(
                        suite.retriever_address,
                        cirr,
                        work / "eval-paper",
                        INSTRUCTCIR_ROWS[:1],
                        echo=print,
                        collection_prefix="ic-paper",
                    )
                    quality[PAPER_NETWORK_ROW] = paper_table["instructcir"]
            # Diagnostic: the same training on the catalog's answer key (the texts a perfect captioner and LLM
            # would write) separates what the triplets' texts cost from what the model can learn.
            key = proof.answer_key_triplets(catalog, work / "answer-key.jsonl")
            run = proof.train(profile, key, work / "model-answer-key", plain_settings, log=print)
            proof.serve_checkpoint(suite, run.checkpoint)
            quality_answer_key = quality_table(
                suite.retriever_address,
                cirr,
                work / "eval-answer-key",
                INSTRUCTCIR_ROWS[:1],
                echo=print,
                collection_prefix="ic-answer-key",
            )
            result["answer_key_triplets"] = _lines(key)
        finally:
            suite.stop()

    svg = out.with_suffix(".svg")
    reference = {label: quality[label]["recall_at_1"] for label in ("image_only", "text_only", "cvsi")}
    points = [(point["triplets"], point["recall_at_1"]) for point in scaling]
    svg.write_text(proof.curve_svg(points, reference, "InstructCIR on the world: R@1 (CIRR-layout val)"))
    result |= {
        "quality": {
            label: {m: v for m, v in values.items() if m in METRICS} for label, values in quality.items()
        },
        "quality_fashioniq": {
            label: {m: values[m] for m in FASHIONIQ_METRICS if m in values}
            for label, values in quality_fashioniq.items()
        },
        "quality_answer_key": _recalls(quality_answer_key),
        "scaling": scaling,
        "train_s": train_s[counts[-1]],
        "train_s_by_triplets": train_s,
        "training_metrics": training_metrics,
        "scaling_svg": str(svg),
        "split": {
            "dataset": "cirr",
            "split": "val",
            "gallery_size": args.gallery_size,
            "queries": args.queries,
        },
        "machine": {"cpus": _cpus(), "platform": platform.platform()},
    }
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(markdown_table(result["quality"], METRICS))
    print(json.dumps({k: result[k] for k in ("scaling", "train_s", "triplets_s")}, indent=2))
    print(f"wrote {out} and {svg}")


def _recalls(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {label: {m: values[m] for m in METRICS if m in values} for label, values in table.items()}


def _lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _progress(label: str) -> Callable[[int, int], None]:
    last = [-1]

    def report(done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth != last[0]:
            last[0] = tenth
            print(f"{label}: {done}/{total}", flush=True)

    return report


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value, default=str))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
