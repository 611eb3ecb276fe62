"""`cir triplets` end to end: a local suite with the tiny pack (random weights), loopback only.

The tiny models' captions and texts are noise: the tests check what the job promises (one line per planned
pair, no pair twice, the shared keys, the models that made each line, captions and texts equal to what the
services answer when asked directly, resuming to the very file an uninterrupted run writes).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image, ImageDraw

from cir.captioner.v1 import captioner_pb2, captioner_pb2_grpc
from cir.common.v1 import common_pb2
from cir.reasoner.v1 import reasoner_pb2, reasoner_pb2_grpc
from cir.retriever.v1 import retriever_pb2
from cir_client.retriever import connect
from cir_tools.cli import main as cir
from cir_tools.local_suite import LocalSuite
from cir_tools.triplets.job import ServiceAddresses, SuiteClients, TripletJobConfig, run_triplet_job
from cir_tools.triplets.output import TRIPLET_KEYS, read_triplets
from cir_tools.triplets.pairing import parse_pairing

pytestmark = pytest.mark.slow

COLLECTION = "shapes"
SHAPES = ["circle", "square", "triangle"]
COLOURS = [(214, 39, 40), (44, 160, 44), (31, 119, 180)]
CAPTION_PROMPT = "a picture of"
MAX_TOKENS = 12
# Images without the `shape` metadata key: same-metadata pairing leaves them out.
UNLABELLED = 2


class _Stop(Exception):
    """Raised by the after-batch hook: an interruption part-way through a run."""


def _png(shape: str, colour: tuple[int, int, int], background: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (64, 64), background)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse((16, 16, 48, 48), fill=colour)
    elif shape == "square":
        pen.rectangle((16, 16, 48, 48), fill=colour)
    else:
        pen.polygon([(32, 12), (52, 52), (12, 52)], fill=colour)
    data = io.BytesIO()
    image.save(data, format="PNG")
    return data.getvalue()


@pytest.fixture(scope="module")
def suite(tiny_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSuite]:
    suite = LocalSuite(
        profile=tiny_pack,
        workdir=tmp_path_factory.mktemp("suite"),
        # The transformers backend starts in seconds; two captions per gallery image keep ingest short.
        extra_env={
            "CIR_REASONER_BACKEND": "transformers",
            "CIR_REASONER_DEVICE": "cpu",
            "CIR_RETRIEVER_DEFAULT_NUM_CAPTIONS": "2",
        },
        progress=None,
    )
    suite.start(timeout_s=400)
    try:
        yield suite
    finally:
        suite.stop()


@pytest.fixture(scope="module")
def gallery(suite: LocalSuite, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Nine labelled shapes and two unlabelled ones, ingested with file:// uris and `shape` metadata."""
    folder = tmp_path_factory.mktemp("gallery")
    files: dict[str, tuple[Path, dict[str, str]]] = {}
    for shape in SHAPES:
        for c, colour in enumerate(COLOURS):
            path = folder / f"{shape}-{c}.png"
            path.write_bytes(_png(shape, colour, (240, 240, 235)))
            files[path.stem] = (path, {"shape": shape})
    for u in range(UNLABELLED):
        path = folder / f"plain-{u}.png"
        path.write_bytes(_png(SHAPES[u], COLOURS[u], (30, 30, 40)))
        files[path.stem] = (path, {})
    requests = (
        retriever_pb2.IngestImagesRequest(
            collection=COLLECTION,
            image=retriever_pb2.GalleryImage(
                id=image_id,
                image=common_pb2.Image(data=path.read_bytes()),
                uri=path.as_uri(),
                metadata=metadata,
            ),
        )
        for image_id, (path, metadata) in files.items()
    )
    events = list(connect(suite.retriever_address).IngestImages(requests, timeout=300))
    statuses = [e.item.status for e in events if e.HasField("item")]
    assert statuses == [retriever_pb2.ITEM_STATUS_INDEXED] * len(files)
    return {image_id: path for image_id, (path, _) in files.items()}


@pytest.fixture
def open_channel(suite: LocalSuite) -> Iterator[Callable[[str], grpc.Channel]]:
    """Channels to the suite's services by name, closed when the test ends."""
    opened: list[grpc.Channel] = []

    def open_(service: str) -> grpc.Channel:
        opened.append(grpc.insecure_channel(suite.processes[service].address))
        return opened[-1]

    yield open_
    for channel in opened:
        channel.close()


def _addresses(suite: LocalSuite) -> list[str]:
    return [
        "--address",
        suite.retriever_address,
        "--captioner-address",
        suite.processes["captioner"].address,
        "--reasoner-address",
        suite.processes["reasoner"].address,
    ]


def _cir_triplets(suite: LocalSuite, out: Path, *arguments: str) -> int:
    return cir(["triplets", "--collection", COLLECTION, "--out", str(out), *arguments, *_addresses(suite)])


RANDOM_RUN = ["--pairs", "random", "--count", "6", "--batch-size", "2", "--seed", "11"]
PROMPTED = ["--caption-prompt", CAPTION_PROMPT, "--max-tokens", str(MAX_TOKENS)]


def test_a_run_writes_one_line_per_pair_made_by_the_services(
    suite: LocalSuite,
    gallery: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    open_channel: Callable[[str], grpc.Channel],
) -> None:
    out = tmp_path / "random.jsonl"
    assert _cir_triplets(suite, out, *RANDOM_RUN, *PROMPTED) == 0
    captured = capsys.readouterr()
    assert "6 pairs (random, seed 11): 0 in" in captured.err and "6/6 pairs" in captured.err
    assert f"wrote 6 triplets to {out}" in captured.out
    lines = read_triplets(out)
    assert len(lines) == 6 and all(tuple(line) == TRIPLET_KEYS for line in lines)
    assert len({frozenset((t["reference_id"], t["target_id"])) for t in lines}) == 6
    assert all(t["reference_id"] != t["target_id"] and t["pairing"] == "random" for t in lines)

    captioner = captioner_pb2_grpc.CaptionerServiceStub(open_channel("captioner"))
    reasoner = reasoner_pb2_grpc.ReasonerServiceStub(open_channel("reasoner"))
    captioner_model = captioner.GetModelInfo(captioner_pb2.GetModelInfoRequest()).model
    reasoner_model = reasoner.GetModelInfo(reasoner_pb2.GetModelInfoRequest()).model
    for line in lines:
        assert line["models"] == {
            "captioner": {"name": captioner_model.name, "revision": captioner_model.revision},
            "reasoner": {"name": reasoner_model.name, "revision": reasoner_model.revision},
        }
        assert line["reference_uri"] == str(gallery[line["reference_id"]])
        assert line["target_uri"] == str(gallery[line["target_id"]])
        assert line["outcome"] in ("parsed", "fallback_empty")
        assert bool(line["text"]) == (line["outcome"] == "parsed")

    # What the services answer when asked directly: the caption with the prompt and the job's seed, and the
    # difference of the two captions.
    first = lines[0]
    direct = captioner.GenerateCaptions(
        captioner_pb2.GenerateCaptionsRequest(
            images=[common_pb2.Image(data=gallery[first["reference_id"]].read_bytes())],
            num_captions=1,
            decoding=captioner_pb2.DecodingParameters(prompt=CAPTION_PROMPT, seed=11),
            bypass_cache=True,
        )
    )
    assert first["reference_caption"] == direct.results[0].captions[0].strip()
    difference = reasoner.DescribeDifferences(
        reasoner_pb2.DescribeDifferencesRequest(
            pairs=[
                reasoner_pb2.CaptionPair(
                    caption_a=first["reference_caption"], caption_b=first["target_caption"]
                )
            ],
            sampling=reasoner_pb2.SamplingParameters(max_tokens=MAX_TOKENS),
            bypass_cache=True,
        )
    ).differences[0]
    assert (difference.text, difference.outcome == reasoner_pb2.PARSE_OUTCOME_PARSED) == (
        first["text"],
        first["outcome"] == "parsed",
    )


def test_an_interrupted_run_resumes_to_the_file_of_an_uninterrupted_one(
    suite: LocalSuite, gallery: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = tmp_path / "whole.jsonl"
    assert _cir_triplets(suite, whole, *RANDOM_RUN, *PROMPTED) == 0

    resumed = tmp_path / "resumed.jsonl"
    config = TripletJobConfig(
        collection=COLLECTION,
        pairing=parse_pairing("random"),
        out=resumed,
        count=6,
        seed=11,
        caption_prompt=CAPTION_PROMPT,
        batch_size=2,
        max_tokens=MAX_TOKENS,
    )

    def stop_after_two(batches: int) -> None:
        if batches == 2:
            raise _Stop

    clients = SuiteClients(
        ServiceAddresses(
            suite.retriever_address, suite.processes["captioner"].address, suite.processes["reasoner"].address
        )
    )
    try:
        with pytest.raises(_Stop):
            run_triplet_job(config, clients, echo=lambda line: None, after_batch=stop_after_two)
    finally:
        clients.close()
    assert len(read_triplets(resumed)) == 4
    # A kill in the middle of the next write: a torn line the rerun drops and writes again.
    with resumed.open("a", encoding="utf-8") as handle:
        handle.write(whole.read_text(encoding="utf-8").splitlines(keepends=True)[4][:40])

    capsys.readouterr()
    assert _cir_triplets(suite, resumed, *RANDOM_RUN, *PROMPTED) == 0
    captured = capsys.readouterr()
    assert "dropped a torn last line (40 bytes)" in captured.err
    assert "6 pairs (random, seed 11): 4 in" in captured.err and "2 to make" in captured.err
    assert resumed.read_bytes() == whole.read_bytes()
    # Run once more: nothing left to do, nothing written twice.
    assert _cir_triplets(suite, resumed, *RANDOM_RUN, *PROMPTED) == 0
    assert "wrote 0 triplets" in capsys.readouterr().out
    assert resumed.read_bytes() == whole.read_bytes()


def test_same_metadata_pairs_share_the_value_and_say_what_was_left_out(
    suite: LocalSuite, gallery: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shape.jsonl"
    assert _cir_triplets(suite, out, "--pairs", "same-metadata:shape", "--max-tokens", str(MAX_TOKENS)) == 0
    assert f"{UNLABELLED} of {len(gallery)} images have no 'shape' metadata" in capsys.readouterr().err
    lines = read_triplets(out)
    assert len(lines) == len(gallery) - UNLABELLED  # one pair per labelled image (9 of the 9 possible)
    shape = {image_id: image_id.split("-")[0] for image_id in gallery}
    assert all(shape[t["reference_id"]] == shape[t["target_id"]] != "plain" for t in lines)
    assert {t["pairing"] for t in lines} == {"same-metadata:shape"}


def test_knn_pairs_each_reference_with_a_near_image(
    suite: LocalSuite, gallery: dict[str, Path], tmp_path: Path, open_channel: Callable[[str], grpc.Channel]
) -> None:
    out = tmp_path / "knn.jsonl"
    arguments = ["--pairs", "knn", "--count", "4", "--num-captions", "2", "--max-tokens", str(MAX_TOKENS)]
    assert _cir_triplets(suite, out, *arguments) == 0
    lines = read_triplets(out)
    assert len(lines) == 4 and {t["pairing"] for t in lines} == {"knn"}
    assert len({frozenset((t["reference_id"], t["target_id"])) for t in lines}) == 4
    # Two captions per image, joined as the reasoner joins them (seed 0: the default).
    captioner = captioner_pb2_grpc.CaptionerServiceStub(open_channel("captioner"))
    direct = captioner.GenerateCaptions(
        captioner_pb2.GenerateCaptionsRequest(
            images=[common_pb2.Image(data=gallery[lines[0]["target_id"]].read_bytes())],
            num_captions=2,
            decoding=captioner_pb2.DecodingParameters(seed=0),
            bypass_cache=True,
        )
    )
    assert lines[0]["target_caption"] == ", ".join(c.strip() for c in direct.results[0].captions if c.strip())


def test_a_collection_that_does_not_exist_is_named(
    suite: LocalSuite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "none.jsonl"
    code = cir(
        ["triplets", "--collection", "no-such", "--pairs", "random", "--out", str(out), *_addresses(suite)]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("cir: --collection 'no-such': ") and "cir collections list" in error
    assert not out.exists()
