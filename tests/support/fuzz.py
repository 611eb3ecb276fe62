"""Seeded hostile requests for any gRPC service of the suite, built from the published protos.

Two kinds of case, both deterministic for a seed:
- structured: a message whose every field is drawn from the values that break services (limits +-1, huge and
  negative numbers, NaN and infinities, unknown enum numbers, empty / very long / control-character /
  path-like strings, bytes that are not images, truncated images, image headers that claim huge sizes);
- malformed: the serialized bytes of a structured case, then truncated, bit-flipped, given garbage tags or
  invalid UTF-8 in a string field, so the server's message parser sees what a broken client would send.

Cases are raw bytes; `call` sends them with identity serializers, so any message (or none) reaches the
server exactly as built. The caller decides what counts as a failure (here: INTERNAL, UNKNOWN, a crash).
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from PIL import Image

FD = _descriptor.FieldDescriptor

_INT32 = (0, 1, -1, 2, 63, 64, 65, 2**31 - 1, -(2**31))
_UINT32 = (0, 1, 2, 64, 65, 2**31, 2**32 - 1)
_INT64 = (*_INT32, 2**63 - 1, -(2**63))
_UINT64 = (*_UINT32, 2**64 - 1)
_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, 3e38, -3e38, 1e300, float("inf"), float("-inf"), float("nan"))
_STRINGS = (
    "",
    " ",
    "a",
    "probe\n",
    "../../../etc/passwd",
    "file:///etc/passwd",
    "http://169.254.169.254/latest/meta-data/",
    "\x00\x01\x02",
    "\u202eevil",
    "名前🙂",
    "%s%s%n",
    "' OR 1=1 --",
    'id == "x" or true',
    "cvsi",
    "targetpad",
    "nucleus",
    "edit_structural",
)


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 40)).save(out, format="PNG")
    return out.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk that claim `width` x `height`, with no pixel data after them."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


_SMALL_PNG = _png(24, 16)
_BYTES = (
    b"",
    b"\x00",
    b"not an image at all",
    _SMALL_PNG,
    _SMALL_PNG[: len(_SMALL_PNG) // 2],
    _png(1, 1),
    _png(400, 2),  # an extreme aspect ratio
    _png_header_claiming(65535, 65535),
    _png_header_claiming(65535, 1),
    b"\xff\xd8\xff" + b"\x00" * 64,  # a JPEG start with nothing behind it
    b"GIF89a" + b"\xff" * 32,
)


@dataclass(frozen=True)
class Method:
    path: str  # "/package.Service/Method"
    request: type[Message]
    client_streaming: bool
    server_streaming: bool


def service_methods(service: _descriptor.ServiceDescriptor) -> list[Method]:
    return [
        Method(
            path=f"/{service.full_name}/{m.name}",
            request=GetMessageClass(m.input_type),
            client_streaming=m.client_streaming,
            server_streaming=m.server_streaming,
        )
        for m in service.methods
    ]


class CaseMaker:
    """Hostile request messages for one seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def structured(self, cls: type[Message], depth: int = 0) -> Message:
        message = cls()
        for field in cls.DESCRIPTOR.fields:
            if self.rng.random() < 0.4:
                continue  # unset: defaults must be handled too
            if field.is_repeated:
                count = self.rng.choice((0, 1, 1, 2, 3, 65))
                if field.type == FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
                    for _ in range(min(count, 5)):
                        key = self._string()[:64]
                        value_field = field.message_type.fields_by_name["value"]
                        if value_field.type == FD.TYPE_MESSAGE:
                            getattr(message, field.name)[key].CopyFrom(
                                self.structured(GetMessageClass(value_field.message_type), depth + 1)
                            )
                        else:
                            getattr(message, field.name)[key] = self._scalar(value_field)
                    continue
                if field.type == FD.TYPE_MESSAGE:
                    if depth >= 3:
                        continue
                    target = getattr(message, field.name)
                    for _ in range(count):
                        target.add().CopyFrom(self.structured(GetMessageClass(field.message_type), depth + 1))
                else:
                    getattr(message, field.name).extend(self._scalar(field) for _ in range(count))
            elif field.type == FD.TYPE_MESSAGE:
                if depth < 3:
                    getattr(message, field.name).CopyFrom(
                        self.structured(GetMessageClass(field.message_type), depth + 1)
                    )
            else:
                setattr(message, field.name, self._scalar(field))
        return message

    def _scalar(self, field: FD) -> Any:
        kind = field.type
        rng = self.rng
        if kind == FD.TYPE_BOOL:
            return rng.random() < 0.5
        if kind in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
            return rng.choice(_INT32) if rng.random() < 0.7 else rng.randint(-1000, 1000)
        if kind in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
            return rng.choice(_UINT32) if rng.random() < 0.7 else rng.randint(0, 1000)
        if kind in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
            return rng.choice(_INT64)
        if kind in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
            return rng.choice(_UINT64)
        if kind in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
            value = rng.choice(_FLOATS) if rng.random() < 0.7 else rng.uniform(-2.0, 2.0)
            if kind == FD.TYPE_FLOAT and abs(value) > 3.4e38 and value not in (float("inf"), float("-inf")):
                return float("inf") if value > 0 else float("-inf")
            return value
        if kind == FD.TYPE_ENUM:
            values = [v.number for v in field.enum_type.values]
            return rng.choice(values) if rng.random() < 0.8 else rng.choice((-1, 99, 2**31 - 1))
        if kind == FD.TYPE_STRING:
            return self._string()
        if kind == FD.TYPE_BYTES:
            return self._bytes()
        raise AssertionError(f"unhandled field type {kind} of {field.full_name}")

    def _string(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.6:
            return rng.choice(_STRINGS)
        if roll < 0.8:
            return "".join(rng.choice("abcxyz_-. 0123456789") for _ in range(rng.randint(1, 40)))
        if roll < 0.95:
            return "long " * rng.choice((100, 1000, 3000))
        return "".join(chr(rng.randint(1, 0xD7FF)) for _ in range(rng.randint(1, 200)))

    def _bytes(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.85:
            return rng.choice(_BYTES)
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 256)))

    def malformed(self, message: Message) -> bytes:
        """The message's bytes, broken the way a buggy or hostile client would break them."""
        data = bytearray(message.SerializeToString())
        rng = self.rng
        choice = rng.randrange(5)
        if choice == 0 and data:  # truncated mid-field
            return bytes(data[: rng.randrange(len(data))])
        if choice == 1 and data:  # flipped bits
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            return bytes(data)
        if choice == 2:  # a string field (field 1, length-delimited) holding invalid UTF-8
            bad = rng.choice((b"\xc3\x28", b"\xff\xfe", b"\xed\xa0\x80", b"ok\x80"))
            return bytes([0x0A, len(bad)]) + bad + bytes(data)
        if choice == 3:  # a tag with an invalid wire type, or a varint that never ends
            return bytes(data) + rng.choice((b"\x0f\x01", b"\x08" + b"\xff" * 11, b"\xfa\xff\xff\xff\x0f"))
        # a length prefix far larger than what follows
        return bytes([0x0A, 0xFF, 0xFF, 0x03]) + bytes(data[:8])

    def case(self, method: Method) -> list[bytes]:
        """One request (a list of messages for a client-streaming method) as raw bytes."""
        count = self.rng.randint(1, 3) if method.client_streaming else 1
        messages = []
        for _ in range(count):
            message = self.structured(method.request)
            raw = self.malformed(message) if self.rng.random() < 0.35 else message.SerializeToString()
            messages.append(raw)
        return messages


def call(channel: grpc.Channel, method: Method, messages: list[bytes], timeout_s: float) -> grpc.StatusCode:
    """Sends raw request bytes and drains the answer; returns the status code the server gave."""
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(method.path)(iter(messages), timeout=timeout_s):
                pass
        elif method.client_streaming:
            channel.stream_unary(method.path)(iter(messages), timeout=timeout_s)
        elif method.server_streaming:
            for _ in channel.unary_stream(method.path)(messages[0], timeout=timeout_s):
                pass
        else:
            channel.unary_unary(method.path)(messages[0], timeout=timeout_s)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def cases(seed: int, methods: list[Method], count: int) -> Iterator[tuple[int, Method, list[bytes]]]:
    """`count` cases spread over `methods` in turn, each with its own index (for reproducing one)."""
    maker = CaseMaker(seed)
    for index in range(count):
        method = methods[index % len(methods)]
        yield index, method, maker.case(method)
