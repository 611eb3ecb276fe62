"""InstructCIR on the world, end to end: an unannotated catalog -> triplets -> a trained model -> served.

The steps a team would take with its own catalog, each through the product's own surface:
1. index the catalog's images (with their family id as metadata, the analogue of a meta-class) into a
   collection of the running suite;
2. `cir triplets`' job: pairs within a family, captioned by the suite's captioner and described by the
   world's triplet LLM (`build_triplet_llm`: trained on the difference prompt alone), which the reasoner
   serves while the job runs;
3. `cir train instructcir`'s trainer on the world CLIP, on the first N triplets (the scaling curve trains on
   growing prefixes of one triplet file);
4. the encoder restarted with the checkpoint, so that collections ingested from then on keep its target
   embeddings and the retriever serves the `instructcir` strategy.
`bench/instructcir_bench.py` runs them and evaluates the result (too long for CI: the triplet LLM and
several trainings); tests/world/test_instructcir_proof.py tests the helpers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cir.common.v1 import common_pb2
from cir.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from cir_tools.local_suite import LocalSuite
from cir_tools.training.instructcir import InstructCirTrainingSettings, TrainingRun
from cir_tools.triplets.job import JobReport
from cir_tools.world.catalog import MANIFEST_NAME, write_catalog

CATALOG_COLLECTION = "world-catalog"
PAIRING = "same-metadata:family"
CHECKPOINT_ENV = "CIR_ENCODER_INSTRUCTCIR_CHECKPOINT"
REASONER_MODEL_ENV = "CIR_REASONER_MODEL"
REASONER_TEMPLATES_ENV = "CIR_REASONER_TEMPLATE_PATHS"
TRIPLET_LLM_ROOT = "triplets"  # under the pack: the triplet LLM's own build (not one of the pack's stages)
ANSWER_KEY_PAIRING = "answer-key"

Echo = Callable[[str], None]


def _training() -> InstructCirTrainingSettings:
    # A short warm-up and a higher rate than the paper's fine-tuning of a pretrained ViT-L: the world CLIP is
    # small and the CPU budget is minutes. 20 epochs: at 6, training on the catalog's answer key reached R@1
    # 10.7 on the CIRR-layout split (below image_only's 17.3); at 20 it reached 18.7 (~100 s on 2 cores).
    return InstructCirTrainingSettings(epochs=20, batch_size=32, lr=3e-4, warmup_steps=20, fusion=True)


@dataclass(frozen=True)
class ProofRecipe:
    """Everything that decides the result (seeded)."""

    families: int = 400
    variants: int = 3
    catalog_seed: int = 21
    pairing: str = PAIRING
    triplets: int = 2400
    triplet_seed: int = 0
    training: InstructCirTrainingSettings = field(default_factory=_training)


def write_world_catalog(out_dir: Path, recipe: ProofRecipe) -> Path:
    return write_catalog(out_dir, recipe.families, recipe.variants, recipe.catalog_seed)


def ingest_catalog(stub: retriever_pb2_grpc.RetrieverServiceStub, collection: str, catalog_dir: Path) -> int:
    """Indexes the catalog's images with their metadata; returns how many the retriever holds afterwards.

    One caption per image at ingest: the collection serves the triplet job (image features, uris, metadata),
    which captions the images itself with the prompt it is given."""
    import grpc

    records = [json.loads(line) for line in (catalog_dir / MANIFEST_NAME).read_text().splitlines() if line]
    settings = retriever_pb2.CollectionSettings(num_captions=1)
    try:
        stub.CreateCollection(
            retriever_pb2.CreateCollectionRequest(collection=collection, settings=settings), timeout=60
        )
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise

    def requests() -> Iterator[retriever_pb2.IngestImagesRequest]:
        for record in records:
            path = (catalog_dir / record["file"]).resolve()
            yield retriever_pb2.IngestImagesRequest(
                collection=collection,
                image=retriever_pb2.GalleryImage(
                    id=record["id"],
                    image=common_pb2.Image(data=path.read_bytes()),
                    uri=str(path),
                    metadata=record["metadata"],
                ),
            )

    failed = []
    for event in stub.IngestImages(requests(), timeout=3600):
        if event.HasField("item") and event.item.status == retriever_pb2.ITEM_STATUS_FAILED:
            failed.append(f"{event.item.id}: {event.item.error_code} {event.item.error_message}")
    if failed:
        raise RuntimeError(f"{len(failed)} catalog images failed to index, e.g. {failed[0]}")
    info = stub.GetCollectionInfo(retriever_pb2.GetCollectionInfoRequest(collection=collection), timeout=60)
    return int(info.size)


def generate_triplets(
    suite: LocalSuite, collection: str, out: Path, recipe: ProofRecipe, progress: Callable[[int, int], None]
) -> JobReport:
    """The triplet job against the running suite (resumes a partial `out`)."""
    from cir_tools.triplets.job import ServiceAddresses, SuiteClients, TripletJobConfig, run_triplet_job
    from cir_tools.triplets.pairing import parse_pairing

    addresses = ServiceAddresses(
        retriever=suite.retriever_address,
        captioner=suite.processes["captioner"].address,
        reasoner=suite.processes["reasoner"].address,
    )
    config = TripletJobConfig(
        collection=collection,
        pairing=parse_pairing(recipe.pairing),
        out=out,
        count=recipe.triplets,
        seed=recipe.triplet_seed,
    )
    clients = SuiteClients(addresses)
    try:
        return run_triplet_job(config, clients, echo=lambda _line: None, progress=progress)
    finally:
        clients.close()


def build_triplet_llm(pack_root: Path, echo: Echo | None = print) -> Path:
    """Builds (or reuses) the world's triplet LLM beside the pack; returns its folder (model/, templates/)."""
    from cir_tools.packs.world import build_stages
    from cir_tools.packs.world_stages import triplet_llm_stage

    root = pack_root / TRIPLET_LLM_ROOT
    stage = triplet_llm_stage()
    build_stages(root, [stage], echo)
    return root / stage.name


def serve_reasoner(suite: LocalSuite, llm_dir: Path | None, timeout_s: float = 900.0) -> None:
    """Restarts the suite's reasoner on the LLM in `llm_dir` (model/ and templates/, as the pack lays them
    out), or on the profile's own LLM (None)."""
    from cir_tools.packs.world_stages import TEMPLATES_DIR

    if llm_dir is None:
        suite.extra_env.pop(REASONER_MODEL_ENV, None)
        suite.extra_env.pop(REASONER_TEMPLATES_ENV, None)
    else:
        suite.extra_env[REASONER_MODEL_ENV] = str(llm_dir / "model")
        suite.extra_env[REASONER_TEMPLATES_ENV] = str(llm_dir / TEMPLATES_DIR)
    suite.stop_service("reasoner")
    suite.start_service("reasoner")
    suite.wait_serving(timeout_s)


def answer_key_triplets(catalog_dir: Path, out: Path) -> Path:
    """A diagnostic triplet file: the catalog's base -> variant pairs with the generator's own texts (what a
    perfect captioner and LLM would have written), in the job's format."""
    from cir_tools.world.catalog import ANSWER_KEY_NAME

    files = {
        record["id"]: str((catalog_dir / record["file"]).resolve())
        for record in map(json.loads, (catalog_dir / MANIFEST_NAME).read_text().splitlines())
    }
    generator = {"name": "world-generator", "revision": ""}
    lines = []
    for answer in map(json.loads, (catalog_dir / ANSWER_KEY_NAME).read_text().splitlines()):
        record = {
            "reference_id": answer["reference_id"],
            "target_id": answer["target_id"],
            "reference_uri": files[answer["reference_id"]],
            "target_uri": files[answer["target_id"]],
            "reference_caption": "",
            "target_caption": "",
            "text": answer["text"],
            "pairing": ANSWER_KEY_PAIRING,
            "outcome": "parsed",
            "models": {"captioner": generator, "reasoner": generator},
        }
        lines.append(json.dumps(record))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def first_triplets(source: Path, count: int, out: Path) -> Path:
    """The first `count` lines of a triplet file (the job writes them in its seeded random order)."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    if count > len(lines):
        raise ValueError(f"{source} holds {len(lines)} triplets, fewer than {count}")
    out.write_text("".join(lines[:count]), encoding="utf-8")
    return out


def train(
    profile: Path,
    triplets: Path,
    out_dir: Path,
    settings: InstructCirTrainingSettings,
    log: Echo | None = None,
) -> TrainingRun:
    """`cir train instructcir --clip PROFILE` (the CLIP the profile serves; one process, CPU, fp32)."""
    from cir_encoder.clip_loading import load_clip
    from cir_tools.training.clip_source import clip_source
    from cir_tools.training.instructcir import train_instructcir
    from cir_tools.training.instructcir_data import read_triplets

    clip = load_clip(*clip_source(str(profile)), "cpu", "fp32")
    return train_instructcir(clip, read_triplets(triplets), out_dir, settings, log=log)


def serve_checkpoint(suite: LocalSuite, checkpoint: Path | None, timeout_s: float = 600.0) -> None:
    """Restarts the suite's encoder with `checkpoint` (None: without InstructCIR) and waits until it serves.

    The retriever asks the encoder what it serves at each ingest, so it needs no restart; collections
    ingested before keep the targets (or their absence) they were made with.
    """
    if checkpoint is None:
        suite.extra_env.pop(CHECKPOINT_ENV, None)
    else:
        suite.extra_env[CHECKPOINT_ENV] = str(checkpoint)
    suite.stop_service("encoder")
    suite.start_service("encoder")
    suite.wait_serving(timeout_s)


def scaling_counts(total: int, points: int = 4) -> list[int]:
    """Triplet counts for the curve: halvings of `total` (smallest first)."""
    return sorted({max(2, total // (2**k)) for k in range(points)})


def curve_svg(points: Sequence[tuple[int, float]], reference: dict[str, float], title: str) -> str:
    """R@1 against the number of triplets (log scale), with horizontal lines for `reference` strategies."""
    width, height, margin = 560, 360, 56
    xs = [count for count, _ in points]
    top = max([value for _, value in points] + list(reference.values()) + [1.0])
    top = min(100.0, top * 1.15)

    import math

    low, high = math.log2(min(xs)), math.log2(max(xs)) if len(xs) > 1 else math.log2(min(xs)) + 1

    def x(count: float) -> float:
        return margin + (math.log2(count) - low) / max(high - low, 1e-9) * (width - 2 * margin)

    def y(value: float) -> float:
        return height - margin - value / top * (height - 2 * margin)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
        f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" '
        'stroke="black"/>',
        f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{height - margin}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 16}" text-anchor="middle">training triplets (log scale)</text>',
        f'<text x="16" y="{height / 2}" transform="rotate(-90 16 {height / 2})" text-anchor="middle">'
        "R@1 (%)</text>",
    ]
    for count in xs:
        parts.append(
            f'<text x="{x(count):.1f}" y="{height - margin + 16}" text-anchor="middle">{count}</text>'
        )
    for tick in range(0, int(top) + 1, 10):
        parts.append(f'<text x="{margin - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick}</text>')
    colours = ("#888", "#c60", "#06c", "#090", "#909")
    for index, (label, value) in enumerate(sorted(reference.items())):
        colour = colours[index % len(colours)]
        parts.append(
            f'<line x1="{margin}" y1="{y(value):.1f}" x2="{width - margin}" y2="{y(value):.1f}" '
            f'stroke="{colour}" stroke-dasharray="4 3"/>'
        )
        parts.append(
            f'<text x="{width - margin + 4}" y="{y(value) + 4:.1f}" fill="{colour}">'
            f"{label} {value:.1f}</text>"
        )
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(c):.1f},{y(v):.1f}" for i, (c, v) in enumerate(points))
    parts.append(f'<path d="{path}" fill="none" stroke="#d00" stroke-width="2"/>')
    for count, value in points:
        parts.append(f'<circle cx="{x(count):.1f}" cy="{y(value):.1f}" r="3" fill="#d00"/>')
        parts.append(
            f'<text x="{x(count):.1f}" y="{y(value) - 8:.1f}" text-anchor="middle" fill="#d00">'
            f"{value:.1f}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
