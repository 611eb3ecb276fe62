"""What the commands that call a running retriever (index, search, collections) share."""

from __future__ import annotations

import argparse
import json

from google.protobuf import json_format
from google.protobuf.message import Message

from cir_common.vocabulary import RETRIEVER

DEFAULT_ADDRESS = RETRIEVER.default_address


# cir_client.retriever.connect reads them; spelled out here so that --help imports no gRPC.
CREDENTIALS_HELP = (
    "API key from CIR_API_KEY; TLS when CIR_TLS_CA_FILE names the CA (a client certificate: "
    "CIR_TLS_CERT_FILE and CIR_TLS_KEY_FILE)"
)


def add_address_argument(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    where = help or f"retriever host:port (default {DEFAULT_ADDRESS})"
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"{where}; {CREDENTIALS_HELP}")


def print_json(message: Message) -> None:
    print(json.dumps(json_format.MessageToDict(message), indent=2))
