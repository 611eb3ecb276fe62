"""The triplet job: pairs of a collection's images, captioned by the captioner, their difference written
by the reasoner, appended to the output file batch by batch (method.md 4.2, InstructCIR).

Runs through the suite's own services: the retriever's ExportGalleryFeatures for the collection, the
captioner's GenerateCaptions (seeded with the job's seed, so an image's captions do not depend on what it
was batched with), the reasoner's DescribeDifferences (greedy: the reasoner's default temperature is 0).
Resuming: the plan is the same for the same collection, pairing, count and seed, and the pairs the output
file holds are not asked again, so an interrupted run rerun leaves the file an uninterrupted run writes.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cir.captioner.v1 import captioner_pb2, captioner_pb2_grpc
from cir.common.v1 import common_pb2
from cir.reasoner.v1 import reasoner_pb2, reasoner_pb2_grpc
from cir.retriever.v1 import retriever_pb2_grpc
from cir_client.retriever import MAX_MESSAGE_BYTES, Credentials, connect
from cir_common.proto_enums import DECODING_TO_PROTO
from cir_common.vocabulary import DecodingVariant
from cir_tools.triplets.gallery import export_collection, read_image, written_uri
from cir_tools.triplets.output import NO_CAPTION, ModelName, TripletFile, TripletRecord
from cir_tools.triplets.pairing import (
    GalleryEntry,
    ImagePair,
    PairingKind,
    PairingSpec,
    iter_batches,
    plan_pairs,
)

# Several captions of one image are joined as the reasoner joins them.
CAPTION_SEPARATOR = ", "


@dataclass(frozen=True)
class ServiceAddresses:
    retriever: str
    captioner: str
    reasoner: str


@dataclass(frozen=True)
class TripletJobConfig:
    collection: str
    pairing: PairingSpec
    out: Path
    count: int | None = None  # None: one pair per eligible image
    seed: int = 0
    caption_prompt: str | None = None  # None: the captioner's own (no prompt)
    decoding: DecodingVariant | None = None  # None: the captioner's default variant
    num_captions: int = 1  # captions per image, joined
    template: str = ""  # the reasoner's difference template; "" = its default
    batch_size: int = 16  # pairs per batch: captioned, described and written together
    images_root: Path | None = None  # where relative uris point
    max_tokens: int = 48  # of a difference answer (the prompt asks for 12 words)
    rpc_timeout_s: float = 600.0


@dataclass
class JobReport:
    planned: int
    available: int
    skipped_images: int
    already_written: int
    torn_bytes: int
    written: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


class SuiteClients:
    """Stubs of the retriever, the captioner and the reasoner; TLS from the caller's environment."""

    def __init__(self, addresses: ServiceAddresses, credentials: Credentials | None = None) -> None:
        credentials = Credentials.from_environment() if credentials is None else credentials
        self.retriever: retriever_pb2_grpc.RetrieverServiceStub = connect(addresses.retriever, credentials)
        tls = credentials.channel_credentials()
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        self._channels = [
            grpc.secure_channel(address, tls, options=options)
            if tls is not None
            else grpc.insecure_channel(address, options=options)
            for address in (addresses.captioner, addresses.reasoner)
        ]
        self.captioner = captioner_pb2_grpc.CaptionerServiceStub(self._channels[0])
        self.reasoner = reasoner_pb2_grpc.ReasonerServiceStub(self._channels[1])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def run_triplet_job(
    config: TripletJobConfig,
    clients: SuiteClients,
    *,
    echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    progress: Callable[[int, int], None] | None = None,
    after_batch: Callable[[int], None] | None = None,
) -> JobReport:
    """Plans the pairs, skips those `config.out` holds, and writes the others batch by batch.

    `progress(done, total)` after each batch (pairs of this plan in the file); `after_batch(batches)` too,
    the hook tests use to stop a run part-way."""
    if config.batch_size < 1 or config.num_captions < 1:
        raise ValueError("batch_size and num_captions must be at least 1")
    entries = export_collection(
        clients.retriever,
        config.collection,
        with_features=config.pairing.kind is PairingKind.KNN,
        timeout_s=config.rpc_timeout_s,
    )
    plan = plan_pairs(entries, config.pairing, config.count, config.seed, config.collection)
    if plan.skipped_images:
        echo(
            f"{plan.skipped_images} of {len(entries)} images have no {config.pairing.key!r} metadata: "
            "left out of the pairs"
        )
    if config.count is not None and config.count > plan.available:
        echo(f"--count {config.count}: {config.pairing.label} allows {plan.available} distinct pairs here")
    by_id = {entry.id: entry for entry in entries}
    with TripletFile.open(config.out) as out:
        todo = [pair for pair in plan.pairs if not out.holds(*pair)]
        report = JobReport(
            planned=len(plan.pairs),
            available=plan.available,
            skipped_images=plan.skipped_images,
            already_written=len(plan.pairs) - len(todo),
            torn_bytes=out.torn_bytes,
        )
        if out.torn_bytes:
            echo(f"{config.out}: dropped a torn last line ({out.torn_bytes} bytes) of an interrupted run")
        foreign = [label for label in out.pairings if label != config.pairing.label]
        if foreign:
            echo(f"{config.out} also holds pairs made by --pairs {', '.join(foreign)}: kept, not redone")
        echo(
            f"{report.planned} pairs ({config.pairing.label}, seed {config.seed}): "
            f"{report.already_written} in {config.out} already, {len(todo)} to make"
        )
        writer = _BatchWriter(config, clients, by_id)
        done = report.already_written
        if progress is not None:
            progress(done, report.planned)
        for number, batch in enumerate(iter_batches(todo, config.batch_size), 1):
            records = writer.records(batch)
            report.written += out.append(records)
            report.outcomes.update(record.outcome for record in records)
            done += len(batch)
            if progress is not None:
                progress(done, report.planned)
            if after_batch is not None:
                after_batch(number)
    return report


class _BatchWriter:
    """Captions (remembered per image for the run) and differences of one batch of pairs."""

    def __init__(
        self, config: TripletJobConfig, clients: SuiteClients, by_id: dict[str, GalleryEntry]
    ) -> None:
        self._config = config
        self._clients = clients
        self._by_id = by_id
        self._captions: dict[str, tuple[str, ModelName]] = {}
        timeout = config.rpc_timeout_s
        captioner = clients.captioner.GetModelInfo(captioner_pb2.GetModelInfoRequest(), timeout=timeout)
        reasoner = clients.reasoner.GetModelInfo(reasoner_pb2.GetModelInfoRequest(), timeout=timeout)
        self._images_per_call = captioner.max_images_per_request or config.batch_size
        self._pairs_per_call = reasoner.max_pairs_per_request or config.batch_size
        self._reasoner_model = ModelName(reasoner.model.name, reasoner.model.revision)

    def records(self, batch: Sequence[ImagePair]) -> list[TripletRecord]:
        self._caption([image_id for pair in batch for image_id in pair])
        described = [pair for pair in batch if all(self._captions[i][0] for i in pair)]
        texts = self._describe(described)
        records = []
        for pair in batch:
            text, outcome, reasoner = texts.get(pair, ("", NO_CAPTION, self._reasoner_model))
            (reference_caption, captioner), (target_caption, _) = (self._captions[i] for i in pair)
            records.append(
                TripletRecord(
                    reference_id=pair.reference_id,
                    target_id=pair.target_id,
                    reference_uri=written_uri(self._by_id[pair.reference_id]),
                    target_uri=written_uri(self._by_id[pair.target_id]),
                    reference_caption=reference_caption,
                    target_caption=target_caption,
                    text=text,
                    pairing=self._config.pairing.label,
                    outcome=outcome,
                    captioner=captioner,
                    reasoner=reasoner,
                )
            )
        return records

    def _caption(self, image_ids: Sequence[str]) -> None:
        config = self._config
        missing = [i for i in dict.fromkeys(image_ids) if i not in self._captions]
        decoding = captioner_pb2.DecodingParameters(seed=config.seed)
        if config.caption_prompt is not None:
            decoding.prompt = config.caption_prompt
        if config.decoding is not None:
            decoding.variant = DECODING_TO_PROTO[config.decoding]
        for start in range(0, len(missing), self._images_per_call):
            chunk = missing[start : start + self._images_per_call]
            request = captioner_pb2.GenerateCaptionsRequest(
                images=[common_pb2.Image(data=read_image(self._by_id[i], config.images_root)) for i in chunk],
                num_captions=config.num_captions,
                decoding=decoding,
            )
            response = self._clients.captioner.GenerateCaptions(request, timeout=config.rpc_timeout_s)
            model = ModelName(response.model.name, response.model.revision)
            for image_id, result in zip(chunk, response.results, strict=True):
                caption = CAPTION_SEPARATOR.join(c.strip() for c in result.captions if c.strip())
                self._captions[image_id] = (caption, model)

    def _describe(self, pairs: Sequence[ImagePair]) -> dict[ImagePair, tuple[str, str, ModelName]]:
        config = self._config
        answers: dict[ImagePair, tuple[str, str, ModelName]] = {}
        for start in range(0, len(pairs), self._pairs_per_call):
            chunk = pairs[start : start + self._pairs_per_call]
            request = reasoner_pb2.DescribeDifferencesRequest(
                pairs=[
                    reasoner_pb2.CaptionPair(
                        caption_a=self._captions[pair.reference_id][0],
                        caption_b=self._captions[pair.target_id][0],
                    )
                    for pair in chunk
                ],
                template=config.template,
                sampling=reasoner_pb2.SamplingParameters(max_tokens=config.max_tokens),
            )
            response = self._clients.reasoner.DescribeDifferences(request, timeout=config.rpc_timeout_s)
            model = ModelName(response.model.name, response.model.revision)
            for pair, answer in zip(chunk, response.differences, strict=True):
                outcome = (
                    reasoner_pb2.ParseOutcome.Name(answer.outcome).removeprefix("PARSE_OUTCOME_").lower()
                )
                answers[pair] = (answer.text, outcome, model)
        return answers


def progress_bar(done: int, total: int) -> None:
    """`[#####.....] 12/40 pairs` on stderr: redrawn in place on a terminal, a line per batch elsewhere."""
    width = 30
    filled = int(width * done / max(total, 1))
    end = "\r" if sys.stderr.isatty() and done < total else "\n"
    print(
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} pairs", end=end, file=sys.stderr, flush=True
    )
