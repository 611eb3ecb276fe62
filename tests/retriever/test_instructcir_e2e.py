"""The instructcir strategy end to end over real gRPC on loopback: a tiny suite whose encoder serves an
InstructCIR checkpoint (made with `cir_encoder.instructcir` on the tiny pack's CLIP, randomly initialised),
a second encoder that serves none, the tiny captioner, and the retriever in this process (its model calls
counted). Rankings are checked against the encoder's own query and target embeddings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from retriever.retriever_support import RunningRetriever, start_retriever

from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir.retriever.v1 import retriever_pb2
from cir_client.retriever import index_folder
from cir_common.config import load_settings
from cir_common.vectors import vector_from_proto
from cir_encoder.clip_loading import load_clip
from cir_encoder.instructcir import InstructCirConfig, InstructCirNetwork, save_instructcir
from cir_encoder.instructcir_serving import clip_identity
from cir_encoder.settings import ENV_PREFIX, SECTION, EncoderSettings
from cir_evaluation.model import DatasetName, Split
from cir_evaluation.synthetic import write_synthetic_dataset
from cir_retriever.core import Retriever
from cir_retriever.settings import RetrieverSettings
from cir_tools.cli import main as cir
from cir_tools.local_suite import LocalSuite

pytestmark = pytest.mark.slow

SCENES = "scenes"  # ingested while the encoder serves the checkpoint
PLAIN = "plain"  # ingested while it served none
TEXT = "the same shape but in blue"
TARGETPAD = encoder_pb2.PREPROCESSING_TARGETPAD
FUSED = retriever_pb2.INSTRUCT_CIR_VARIANT_FUSED
PLAIN_VARIANT = retriever_pb2.INSTRUCT_CIR_VARIANT_PLAIN


@pytest.fixture(scope="module")
def checkpoint(tiny_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised InstructCIR network with Eq. 3 fusion, on the tiny pack's CLIP."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = load_settings(
            EncoderSettings, section=SECTION, env_prefix=ENV_PREFIX, profile=tiny_pack, environ={}
        )
        clip = load_clip(
            settings.clip_model, settings.clip_pretrained, settings.clip_config_dir, "cpu", "fp32"
        )
        torch.manual_seed(18)
        network = InstructCirNetwork(
            clip.model, InstructCirConfig(predictor_hidden_dim=32, fusion=True)
        ).eval()
        path = tmp_path_factory.mktemp("instructcir") / "instructcir-tiny.pt"
        save_instructcir(path, network, clip_identity=clip_identity(clip), training={"epochs": 0, "steps": 0})
        return path
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gallery")
    colours = [(214, 39, 40), (44, 160, 44), (31, 119, 180)]
    for index, colour in enumerate(colours):
        for shape in ("square", "circle"):
            image = Image.new("RGB", (96, 96), (245, 245, 240))
            pen = ImageDraw.Draw(image)
            (pen.rectangle if shape == "square" else pen.ellipse)((24, 24, 72, 72), fill=colour)
            image.save(folder / f"{shape}-{index}.png")
    return folder


@pytest.fixture(scope="module")
def suite(tiny_pack, checkpoint, gallery, tmp_path_factory) -> Iterator[LocalSuite]:
    """Encoder (serving the checkpoint; it reads references by URI under the gallery folder) + captioner."""
    models = LocalSuite(
        profile=tiny_pack,
        workdir=tmp_path_factory.mktemp("instructcir-suite"),
        use_redis=False,
        extra_env={
            "CIR_ENCODER_INSTRUCTCIR_CHECKPOINT": str(checkpoint),
            "CIR_ENCODER_IMAGE_URI_ROOTS": str(gallery.resolve()),
        },
    )
    models.start(timeout_s=400, names=("encoder", "captioner"))
    yield models
    models.stop()


@pytest.fixture(scope="module")
def plain_encoder(tiny_pack, tmp_path_factory) -> Iterator[LocalSuite]:
    """The same CLIP, serving no InstructCIR checkpoint."""
    models = LocalSuite(profile=tiny_pack, workdir=tmp_path_factory.mktemp("plain-encoder"), use_redis=False)
    models.start(timeout_s=400, names=("encoder",))
    yield models
    models.stop()


def _settings(
    encoder: LocalSuite, models: LocalSuite, store_dir: Path, **overrides: object
) -> RetrieverSettings:
    settings = RetrieverSettings(
        encoder_address=f"127.0.0.1:{encoder.ports['encoder']}",
        captioner_address=f"127.0.0.1:{models.ports['captioner']}",
        reasoner_address=f"127.0.0.1:{models.ports['reasoner']}",  # never started: instructcir needs none
        store_dir=str(store_dir),
        default_num_captions=2,  # the collections the evaluation creates: the tiny captioner stays quick
    )
    for name, value in overrides.items():
        setattr(settings, name, value)
    return settings


def _index(retriever: RunningRetriever, collection: str, gallery: Path) -> None:
    settings = retriever_pb2.CollectionSettings(num_captions=2)
    retriever.stub.CreateCollection(
        retriever_pb2.CreateCollectionRequest(collection=collection, settings=settings), timeout=30
    )
    assert index_folder(retriever.stub, collection, gallery).counts == {"indexed": 6}


@pytest.fixture(scope="module")
def retriever(suite, plain_encoder, gallery, tmp_path_factory) -> Iterator[RunningRetriever]:
    """The retriever on the checkpoint's encoder, its store holding PLAIN (indexed first through the plain
    encoder) and SCENES."""
    store_dir = tmp_path_factory.mktemp("collections")
    before = start_retriever(_settings(plain_encoder, suite, store_dir))
    try:
        _index(before, PLAIN, gallery)
        assert before.calls.counts()["EmbedInstructCirTargets"] == 0  # that encoder serves no checkpoint
    finally:
        before.stop()
    running = start_retriever(_settings(suite, suite, store_dir))
    try:
        _index(running, SCENES, gallery)
        assert running.calls.counts()["EmbedInstructCirTargets"] >= 1
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def encoder(suite) -> Iterator[encoder_pb2_grpc.EncoderServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{suite.ports['encoder']}")
    yield encoder_pb2_grpc.EncoderServiceStub(channel)
    channel.close()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _targets(encoder, gallery: Path) -> tuple[list[str], np.ndarray]:
    paths = sorted(gallery.glob("*.png"))
    response = encoder.EmbedInstructCirTargets(
        encoder_pb2.EmbedInstructCirTargetsRequest(
            images=[common_pb2.Image(data=p.read_bytes()) for p in paths], preprocessing=TARGETPAD
        ),
        timeout=120,
    )
    return [p.stem for p in paths], _unit(np.stack([vector_from_proto(v) for v in response.embeddings]))


def _query(encoder, image: bytes, fused: bool) -> np.ndarray:
    query = encoder_pb2.InstructCirQuery(reference_image=common_pb2.Image(data=image), text=TEXT)
    response = encoder.EmbedInstructCirQueries(
        encoder_pb2.EmbedInstructCirQueriesRequest(queries=[query], fused=fused, preprocessing=TARGETPAD),
        timeout=120,
    )
    return vector_from_proto(response.embeddings[0])


def _search(retriever: RunningRetriever, collection: str, **fields: object) -> retriever_pb2.SearchResponse:
    request = retriever_pb2.SearchRequest(
        collection=collection, modification_text=TEXT, top_k=6, explain=True, return_features=True, **fields
    )
    return retriever.stub.Search(request, timeout=120)


def _assert_ranked(response: retriever_pb2.SearchResponse, ids: list[str], scores: np.ndarray) -> None:
    order = np.argsort(-scores, kind="stable")
    assert [h.id for h in response.hits] == [ids[i] for i in order]
    np.testing.assert_allclose([h.score for h in response.hits], scores[order], atol=1e-5)


@pytest.mark.parametrize("variant", [PLAIN_VARIANT, FUSED], ids=["plain", "fused"])
def test_the_ranking_is_the_encoders_own_query_against_its_targets(retriever, encoder, gallery, variant):
    fused = variant == FUSED
    reference = (gallery / "square-0.png").read_bytes()
    ids, targets = _targets(encoder, gallery)
    query = _query(encoder, reference, fused)
    options = retriever_pb2.StrategyOptions(instructcir_variant=variant)
    strategy = retriever_pb2.STRATEGY_INSTRUCTCIR
    by_bytes = _search(
        retriever,
        SCENES,
        reference_image=common_pb2.Image(data=reference),
        strategy=strategy,
        options=options,
    )
    assert not by_bytes.degradations
    _assert_ranked(by_bytes, ids, targets @ _unit(query))
    np.testing.assert_allclose(vector_from_proto(by_bytes.features.instructcir_query), query, atol=1e-5)
    assert retriever.calls.of("EmbedInstructCirQueries")[-1].fused is fused  # the variant reached the encoder
    assert by_bytes.resolved.strategy == strategy and by_bytes.resolved.instructcir_variant == variant

    details = by_bytes.explanation.details
    info = encoder.GetModelInfo(encoder_pb2.GetModelInfoRequest(), timeout=30).instructcir
    assert details["instructcir_variant"] == ("fused" if fused else "plain")
    assert details["instructcir_checkpoint"] == f"{info.model.name}@{info.model.revision}"
    assert ("instructcir_fusion_weight" in details) is fused

    # by id: the stored image's URI goes to the encoder, which reads it under its image_uri_roots
    by_id = _search(retriever, SCENES, reference_id="square-0", strategy=strategy, options=options)
    assert not by_id.degradations
    _assert_ranked(by_id, ids, targets @ _unit(query))


def test_the_collection_shows_its_column_and_exports_it_for_an_import(retriever, encoder, gallery):
    info = retriever.stub.GetCollectionInfo(
        retriever_pb2.GetCollectionInfoRequest(collection=SCENES), timeout=30
    )
    served = encoder.GetModelInfo(encoder_pb2.GetModelInfoRequest(), timeout=30).instructcir
    assert info.models.instructcir.name == served.model.name
    assert info.models.instructcir.revision == served.model.revision
    assert retriever_pb2.STRATEGY_INSTRUCTCIR in info.strategies_available
    plain = retriever.stub.GetCollectionInfo(
        retriever_pb2.GetCollectionInfoRequest(collection=PLAIN), timeout=30
    )
    assert not plain.models.instructcir.name
    assert retriever_pb2.STRATEGY_INSTRUCTCIR not in plain.strategies_available

    ids, targets = _targets(encoder, gallery)
    pages = list(
        retriever.stub.ExportGalleryFeatures(
            retriever_pb2.ExportGalleryFeaturesRequest(collection=SCENES), timeout=60
        )
    )
    images = [image for page in pages for image in page.images]
    exported = {image.id: vector_from_proto(image.instructcir_target) for image in images}
    np.testing.assert_allclose(np.stack([exported[i] for i in ids]), targets, atol=1e-5)

    def stream() -> Iterator[retriever_pb2.ImportGalleryFeaturesRequest]:
        yield retriever_pb2.ImportGalleryFeaturesRequest(
            collection="copy", models=info.models, embedding_dim=info.embedding_dim, images=images
        )

    assert retriever.stub.ImportGalleryFeatures(stream(), timeout=60).indexed == 6
    request = {"reference_id": "circle-1", "strategy": retriever_pb2.STRATEGY_INSTRUCTCIR}
    original, copy = _search(retriever, SCENES, **request), _search(retriever, "copy", **request)
    assert [(h.id, h.score) for h in copy.hits] == [(h.id, h.score) for h in original.hits]


def test_a_collection_ingested_without_a_checkpoint_says_what_to_do(retriever):
    with pytest.raises(grpc.RpcError) as raised:
        _search(retriever, PLAIN, reference_id="square-0", strategy=retriever_pb2.STRATEGY_INSTRUCTCIR)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no InstructCIR target embeddings" in raised.value.details()
    assert "ingest them again" in raised.value.details()
    # the collection itself keeps working as before
    image_only = _search(
        retriever, PLAIN, reference_id="square-0", strategy=retriever_pb2.STRATEGY_IMAGE_ONLY
    )
    assert image_only.hits[0].id == "square-0" and not image_only.degradations


def _set_budget(retriever: RunningRetriever, seconds: float) -> None:
    def change(core: Retriever) -> None:
        core.settings.instructcir_budget_s = seconds

    retriever.on_loop(change)


def test_a_query_past_its_budget_answers_with_the_image_only_ranking(retriever, gallery):
    reference = common_pb2.Image(data=(gallery / "circle-2.png").read_bytes())
    image_only = _search(
        retriever, SCENES, reference_image=reference, strategy=retriever_pb2.STRATEGY_IMAGE_ONLY
    )
    _set_budget(retriever, 1e-4)
    try:
        response = _search(
            retriever, SCENES, reference_image=reference, strategy=retriever_pb2.STRATEGY_INSTRUCTCIR
        )
    finally:
        _set_budget(retriever, RetrieverSettings.instructcir_budget_s)
    [degradation] = response.degradations
    assert degradation.stage == "instructcir_query"
    assert "image_only" in degradation.effect
    assert [(h.id, h.score) for h in response.hits] == [(h.id, h.score) for h in image_only.hits]
    assert not response.features.HasField("instructcir_query")
    assert response.resolved.strategy == retriever_pb2.STRATEGY_INSTRUCTCIR


def test_cir_eval_runs_it_and_its_offline_scores_agree_with_the_service(retriever, tmp_path):
    root = write_synthetic_dataset(
        DatasetName.CIRR, tmp_path / "cirr", Split.VAL, gallery_size=8, num_queries=3
    )
    out = tmp_path / "run"
    command = ["eval", "--dataset", "cirr", "--root", str(root), "--out", str(out)]
    command += [
        "--address",
        retriever.server.address,
        "--strategy",
        "instructcir",
        "--instructcir-variant",
        "fused",
    ]
    assert cir(command) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["strategy"] == "instructcir" and summary["degraded_queries"] == 0
    # re-scored from the exported targets and the cached query vectors: the service's own ranking
    assert summary["service_agreement"] == {"same_top_ids": 3, "of": 3}
    with np.load(out / "features" / "gallery-all.npz") as cached:
        assert cached["instructcir_target"].shape[0] == 8
    rankings = (out / "rankings.jsonl").read_text()
    assert cir([*command, "--rescore-only"]) == 0  # no model call: from the cache alone
    assert (out / "rankings.jsonl").read_text() == rankings


def test_an_encoder_gone_mid_way_degrades_to_image_only_and_says_so(retriever, suite):
    """Last in this module: it stops the checkpoint's encoder. A search by id needs no encoder for its image
    (stored), so only the InstructCIR query fails, with the encoder's own status."""

    def fresh_info(core: Retriever) -> None:
        core._encoder_info = None  # the next search reads GetModelInfo now: the 30 s cache covers this test

    retriever.on_loop(fresh_info)
    image_only = _search(
        retriever, SCENES, reference_id="circle-0", strategy=retriever_pb2.STRATEGY_IMAGE_ONLY
    )
    suite.kill_service("encoder")
    response = _search(
        retriever, SCENES, reference_id="circle-0", strategy=retriever_pb2.STRATEGY_INSTRUCTCIR
    )
    [degradation] = response.degradations
    assert degradation.stage == "instructcir_query"
    assert degradation.reason.startswith("UNAVAILABLE")
    assert [(h.id, h.score) for h in response.hits] == [(h.id, h.score) for h in image_only.hits]
    stats = retriever.stats()
    assert stats.degradations_by_stage["instructcir_query"] >= 2
