"""`cir models tiny`: build the pack of tiny random models and the profile that points the services at it.

One builder per model family sits beside this module (`tiny_encoder`, `tiny_captioner`, `tiny_reasoner`);
this module only calls them and writes `profile.toml`, which every service's settings class then reads
(`cir_tools.profiles.check_profile`): a key no service knows fails the build, not a service's start. The
builders are imported when called: they need torch, and `cir --help` must not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

from cir_common.vocabulary import CAPTIONER, ENCODER, REASONER, RETRIEVER
from cir_tools.profiles import check_profile

PROFILE_NAME = "profile.toml"
PROFILE_HEADER = "# Tiny random models: the wiring is real, the weights are random (rankings mean nothing).\n"
TINY_SEED = 0


def build_tiny_pack(out_dir: Path, echo: Callable[[str], None] | None = print) -> Path:
    """Build the tiny CLIP + Phi, BLIP-2 and LLM under `out_dir`; return the path of the profile written.

    `echo` receives one line per file written (the CLI prints them); None keeps it quiet.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    from cir_tools.packs import tiny_captioner as captioner
    from cir_tools.packs import tiny_encoder as encoder
    from cir_tools.packs import tiny_reasoner as reasoner

    encoder_files = encoder.build_tiny_encoder(out_dir / "encoder", seed=TINY_SEED)
    blip2_dir = captioner.build_tiny_blip2(out_dir / "captioner" / "blip2-tiny", seed=TINY_SEED)
    llm_dir = reasoner.build_tiny_llm(out_dir / "reasoner" / "llm-tiny", seed=TINY_SEED)

    profile: dict[str, dict[str, str | int | bool]] = {
        ENCODER.profile_section: {
            "clip_model": encoder.TINY_CLIP_NAME,
            "clip_pretrained": str(encoder_files.checkpoint),
            "clip_config_dir": str(encoder_files.config_dir),
            "default_mapping_network": "lincir",
        },
        f"{ENCODER.profile_section}.mapping_networks": {
            name: str(path) for name, path in encoder_files.mapping_networks.items()
        },
        CAPTIONER.profile_section: {"model": str(blip2_dir)},
        REASONER.profile_section: {
            "backend": "vllm",
            "model": str(llm_dir),
            "max_model_len": int(reasoner.TINY_LLM_CONTEXT),
            # The tiny pack runs on CPU machines: vLLM's CPU engine would compile the model with
            # torch.compile unless eager, which took over 300 s to start on a loaded 2-core machine.
            "enforce_eager": True,
        },
        RETRIEVER.profile_section: {
            # On a few CPU cores the captioner and the LLM finish searches fastest one at a time; admitting
            # more only stretches every search past its deadline (bench/overload_bench.py).
            "max_concurrent_generative_searches": 1,
            "max_queued_generative_searches": 4,
        },
    }
    profile_path = out_dir / PROFILE_NAME
    profile_path.write_text(PROFILE_HEADER + render_toml(profile), encoding="utf-8")
    check_profile(profile_path)  # ConfigError: a key or value some service refuses
    if echo is not None:
        for line in describe_files(out_dir):
            echo(line)
    return profile_path


def describe_files(root: Path) -> list[str]:
    """One line per file under `root`: its path relative to `root` and its size."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [f"wrote {p.relative_to(root)} ({_size(p.stat().st_size)})" for p in files] + [f"pack: {root}"]


def _size(num_bytes: int) -> str:
    if num_bytes < 1024:
        return f"{num_bytes} B"
    size = num_bytes / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def render_toml(tables: Mapping[str, Mapping[str, str | int | float | bool]]) -> str:
    """TOML text for flat tables of string, integer, finite float and boolean values (all a profile needs)."""
    blocks = []
    for table, values in tables.items():
        lines = [f"[{table}]"]
        lines.extend(f"{_toml_key(key)} = {_toml_value(value)}" for key, value in values.items())
        blocks.append("\n".join(lines) + "\n")
    return "".join(blocks)


def _toml_key(key: str) -> str:
    if key and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in key):
        return key
    return _toml_string(key)


def _toml_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)  # Python's shortest repr is a TOML float (1.0, 0.45, 1e-06)
    if not isinstance(value, (str, int)):
        raise TypeError(f"profile values are strings, integers, finite floats or booleans, not {value!r}")
    return str(value) if isinstance(value, int) else _toml_string(value)


def _toml_string(text: str) -> str:
    escaped = []
    for ch in text:
        if ch == "\\":
            escaped.append("\\\\")
        elif ch == '"':
            escaped.append('\\"')
        elif ch == "\n":
            escaped.append("\\n")
        elif ch == "\t":
            escaped.append("\\t")
        elif ch == "\r":
            escaped.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\u{ord(ch):04X}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'
