"""The suite's one vocabulary: the services and how each is named, and every closed set of choices.

A name that more than one package spells (a service's gRPC name, its default port, its settings prefix, a
decoding variant) is defined here once and imported everywhere else, so renaming one cannot leave a copy
behind. Choices are `StrEnum`s: their values are what profiles, environment variables and proto string
fields carry, so `Preprocessing("targetpad")` parses a setting and `str(Preprocessing.TARGETPAD)` writes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from google.protobuf.descriptor import FileDescriptor

from cir.captioner.v1 import captioner_pb2
from cir.encoder.v1 import encoder_pb2
from cir.reasoner.v1 import reasoner_pb2
from cir.retriever.v1 import retriever_pb2


class Service(StrEnum):
    """The four services; the value is the profile section and the `cir serve` / healthcheck name."""

    RETRIEVER = "retriever"
    ENCODER = "encoder"
    CAPTIONER = "captioner"
    REASONER = "reasoner"


@dataclass(frozen=True)
class ServiceIdentity:
    service: Service
    grpc_name: str  # the full gRPC service name, read from the proto descriptor
    default_port: int
    package: str  # the Python package that runs it: `python -m <package>`

    @property
    def env_prefix(self) -> str:
        """Prefix of the service's environment variables, e.g. CIR_ENCODER_ (CIR_ENCODER_PORT)."""
        return f"CIR_{self.service.value.upper()}_"

    @property
    def profile_section(self) -> str:
        """The `[section]` of a profile TOML that holds the service's settings."""
        return self.service.value

    @property
    def default_address(self) -> str:
        return f"127.0.0.1:{self.default_port}"


def _grpc_name(module: FileDescriptor, name: str) -> str:
    return module.services_by_name[name].full_name


SERVICES: dict[Service, ServiceIdentity] = {
    identity.service: identity
    for identity in (
        ServiceIdentity(
            Service.RETRIEVER,
            _grpc_name(retriever_pb2.DESCRIPTOR, "RetrieverService"),
            50050,
            "cir_retriever",
        ),
        ServiceIdentity(
            Service.ENCODER, _grpc_name(encoder_pb2.DESCRIPTOR, "EncoderService"), 50051, "cir_encoder"
        ),
        ServiceIdentity(
            Service.CAPTIONER,
            _grpc_name(captioner_pb2.DESCRIPTOR, "CaptionerService"),
            50052,
            "cir_captioner",
        ),
        ServiceIdentity(
            Service.REASONER, _grpc_name(reasoner_pb2.DESCRIPTOR, "ReasonerService"), 50053, "cir_reasoner"
        ),
    )
}

RETRIEVER = SERVICES[Service.RETRIEVER]
ENCODER = SERVICES[Service.ENCODER]
CAPTIONER = SERVICES[Service.CAPTIONER]
REASONER = SERVICES[Service.REASONER]

# The environment variable naming a profile for every service (a service's own <PREFIX>PROFILE wins).
PROFILE_ENV = "CIR_PROFILE"

# What a caller of the suite (the `cir` command, cir_client, the Go and Node examples, the images' health
# check) reads from its environment: its API key (sent as `authorization: Bearer <key>`), and TLS: the CA it
# trusts, and a client certificate and key for mTLS.
API_KEY_ENV = "CIR_API_KEY"
TLS_CA_FILE_ENV = "CIR_TLS_CA_FILE"
TLS_CERT_FILE_ENV = "CIR_TLS_CERT_FILE"
TLS_KEY_FILE_ENV = "CIR_TLS_KEY_FILE"


# --- closed sets of choices that more than one service (or a service and the retriever's collection
# --- settings) share. A choice only one service knows lives in that service's settings module.


class Preprocessing(StrEnum):
    """How the encoder fits an image to CLIP's square input."""

    TARGETPAD = "targetpad"  # pad to a target aspect ratio first (CVSI, method.md)
    MODEL_DEFAULT = "model_default"  # the open_clip model's own resize and center crop


class DecodingVariant(StrEnum):
    """How the captioner samples captions (method.md: the released code's and the paper's variants)."""

    NUCLEUS = "nucleus"
    BEAM_SAMPLE = "beam_sample"


class EditMode(StrEnum):
    """How the reasoner edits several captions of one image."""

    PER_CAPTION = "per_caption"  # one edited caption per caption (the default)
    JOINED = "joined"  # one edited caption for all captions joined


class CaptionSelection(StrEnum):
    """Which captions the added-objects prompt reads."""

    FIRST = "first"
    ALL_JOINED = "all_joined"  # the default: CVSI's released code


class Precision(StrEnum):
    """The numeric precision a model runs in: the encoder's `precision`, the captioner's `dtype`.

    auto = fp16 on CUDA, fp32 elsewhere. The pure_* forms are open_clip's (every weight in half precision,
    layer norms included), so only the encoder takes them. torch's spellings (float32, float16, bfloat16)
    read as fp32, fp16 and bf16.
    """

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    PURE_FP16 = "pure_fp16"
    PURE_BF16 = "pure_bf16"

    @classmethod
    def _missing_(cls, value: object) -> Precision | None:
        return cls.__members__.get(_TORCH_PRECISION_NAMES.get(str(value), ""))


_TORCH_PRECISION_NAMES = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16"}


class LogFormat(StrEnum):
    """How a service writes its log lines."""

    TEXT = "text"  # one human-readable line per record
    JSON = "json"  # one JSON object per line (request id, trace id), for log pipelines
