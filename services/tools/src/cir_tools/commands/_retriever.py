"""What the commands that call a running retriever (index, search, collections) share."""

from __future__ import annotations

import argparse
import json

from google.protobuf import json_format
from google.protobuf.message import Message

from cir_common.vocabulary import RETRIEVER

DEFAULT_ADDRESS = RETRIEVER.default_address


def add_address_argument(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=help)


def print_json(message: Message) -> None:
    print(json.dumps(json_format.MessageToDict(message), indent=2))
