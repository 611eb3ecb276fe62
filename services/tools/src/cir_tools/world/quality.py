"""The quality table: every strategy and variant evaluated on a world split through a running suite.

Each row is one `cir eval` run (`cir_evaluation.evaluate`) against the retriever at `address`, with the
strategy and variant options a caller would send; rows share the ingested gallery (the retriever answers
"unchanged" for images it already holds). Metric names are the evaluation package's ("Recall@1") turned
into the benchmark's keys ("recall_at_1").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cir.common.v1 import common_pb2
from cir.retriever.v1 import retriever_pb2
from cir_evaluation.evaluate import EvalConfig, evaluate
from cir_evaluation.model import DatasetName, Split
from cir_retriever.strategies import StrategyName


@dataclass(frozen=True)
class QualityRow:
    """One line of the table: its label (the API's strategy name, or name_variant) and what is sent."""

    label: str
    strategy: StrategyName
    options: retriever_pb2.StrategyOptions = field(default_factory=retriever_pb2.StrategyOptions)


_RELEASED_CVSI = retriever_pb2.StrategyOptions(
    edit_mode=common_pb2.EDIT_MODE_JOINED,
    objects_caption_selection=common_pb2.CAPTION_SELECTION_ALL_JOINED,
    score_function=retriever_pb2.SCORE_FUNCTION_DOT,
)
_PAPER_CVSI = retriever_pb2.StrategyOptions(
    edit_mode=common_pb2.EDIT_MODE_PER_CAPTION,
    objects_caption_selection=common_pb2.CAPTION_SELECTION_FIRST,
    score_function=retriever_pb2.SCORE_FUNCTION_COSINE,
)

QUALITY_ROWS: tuple[QualityRow, ...] = (
    QualityRow("image_only", StrategyName.IMAGE_ONLY),
    QualityRow("text_only", StrategyName.TEXT_ONLY),
    QualityRow("captioning", StrategyName.CAPTIONING),
    QualityRow("pic2word", StrategyName.PIC2WORD),
    QualityRow("searle", StrategyName.SEARLE),
    QualityRow("lincir", StrategyName.LINCIR),
    QualityRow("cirevl", StrategyName.CIREVL),
    QualityRow("ldre", StrategyName.LDRE),
    QualityRow("weimocir", StrategyName.WEIMOCIR),
    QualityRow(
        "weimocir_paper",
        StrategyName.WEIMOCIR,
        retriever_pb2.StrategyOptions(weimocir_variant=retriever_pb2.WEI_MO_CIR_VARIANT_PAPER),
    ),
    QualityRow("cvsi", StrategyName.CVSI),
    QualityRow("cvsi_released", StrategyName.CVSI, _RELEASED_CVSI),
    QualityRow("cvsi_paper", StrategyName.CVSI, _PAPER_CVSI),
)
# Served only by an encoder that loads an InstructCIR checkpoint (bench/instructcir_bench.py trains one).
INSTRUCTCIR_ROWS: tuple[QualityRow, ...] = (
    QualityRow("instructcir", StrategyName.INSTRUCTCIR),
    QualityRow(
        "instructcir_fused",
        StrategyName.INSTRUCTCIR,
        retriever_pb2.StrategyOptions(instructcir_variant=retriever_pb2.INSTRUCT_CIR_VARIANT_FUSED),
    ),
)
BASELINES = ("image_only", "text_only")
# The rows that compose image and text (every row but the two baselines).
COMPOSED = tuple(row.label for row in QUALITY_ROWS if row.label not in BASELINES)

Echo = Callable[[str], None]


def metric_key(name: str) -> str:
    """The evaluation's metric name as a benchmark key: Recall@1 -> recall_at_1, mAP@10 -> map_at_10."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace("@", "_at_")).strip("_")


def evaluate_row(
    row: QualityRow,
    address: str,
    root: Path,
    out: Path,
    dataset: DatasetName = DatasetName.CIRR,
    split: Split = Split.VAL,
    max_queries: int | None = None,
    echo: Echo | None = None,
    collection_prefix: str = "world",
) -> dict[str, float]:
    """One row's metrics (percent, as the official protocols report them), keyed as `metric_key` says.

    Rows with one `collection_prefix` share the ingested gallery; an InstructCIR checkpoint needs its own
    (a collection keeps the targets of the checkpoint served when it was made)."""
    config = EvalConfig(
        dataset=dataset,
        root=root,
        split=split,
        out=out / row.label,
        strategy=row.strategy,
        options=row.options,
        address=address,
        collection_prefix=collection_prefix,
        max_queries=max_queries,
    )
    summary = evaluate(config, echo or (lambda _line: None))
    metrics = summary["metrics"]
    assert isinstance(metrics, Mapping)
    return {metric_key(name): value for name, value in _flat(metrics)}


def _flat(metrics: Mapping[str, object], prefix: str = "") -> list[tuple[str, float]]:
    """Numbers of a (nested) metrics dict as ("outer inner", value): FashionIQ's "average" and
    "per_category" hold their recalls one level or two down ("average R@10" -> average_r_at_10)."""
    flat: list[tuple[str, float]] = []
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            flat.extend(_flat(value, f"{prefix}{name} "))
        elif _is_number(value):
            flat.append((f"{prefix}{name}", float(value)))
    return flat


def quality_table(
    address: str,
    root: Path,
    out: Path,
    rows: Sequence[QualityRow] = QUALITY_ROWS,
    dataset: DatasetName = DatasetName.CIRR,
    split: Split = Split.VAL,
    max_queries: int | None = None,
    echo: Echo | None = None,
    collection_prefix: str = "world",
) -> dict[str, dict[str, float]]:
    """{row label: {metric: value}} for `rows`, in their order."""
    return {
        row.label: evaluate_row(row, address, root, out, dataset, split, max_queries, echo, collection_prefix)
        for row in rows
    }


def markdown_table(table: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> str:
    """The table as README markdown: one row per strategy, one column per metric (two decimals)."""
    lines = ["| strategy | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for label, values in table.items():
        cells = [f"{values[m]:.2f}" if m in values else "-" for m in metrics]
        lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
