"""The pack layout and its profile.toml."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cir_common.errors import ConfigError
from cir_common.vocabulary import Service
from cir_tools.packs.tiny import PROFILE_HEADER, build_tiny_pack, render_toml
from cir_tools.profiles import check_profile


def test_profile_points_at_existing_absolute_files(tiny_pack: Path, tiny_profile: dict[str, Any]) -> None:
    assert tiny_pack.read_text(encoding="utf-8").startswith(PROFILE_HEADER)
    encoder = tiny_profile["encoder"]
    assert encoder["clip_model"] == "cir-tiny-clip"
    assert encoder["default_mapping_network"] == "lincir"
    assert tiny_profile["reasoner"]["backend"] == "vllm"
    assert tiny_profile["reasoner"]["max_model_len"] == 8192
    files = [encoder["clip_pretrained"], encoder["mapping_networks"]["lincir"]]
    folders = [
        encoder["clip_config_dir"],
        tiny_profile["captioner"]["model"],
        tiny_profile["reasoner"]["model"],
    ]
    for name in files:
        assert Path(name).is_absolute() and Path(name).is_file(), name
    for name in folders:
        assert Path(name).is_absolute() and Path(name).is_dir(), name
    assert (Path(encoder["clip_config_dir"]) / "cir-tiny-clip.json").is_file()


def test_render_toml_escapes_strings_for_a_toml_reader() -> None:
    awkward = 'C:\\models\\"quoted"\nline\ttab \u00e9'
    text = render_toml({"a": {"path": awkward, "n": 7}, "a.b": {"key with space": "x"}})
    assert tomllib.loads(text) == {"a": {"path": awkward, "n": 7, "b": {"key with space": "x"}}}


def test_render_toml_writes_booleans_and_floats_and_refuses_values_it_cannot_write() -> None:
    assert tomllib.loads(render_toml({"a": {"flag": True, "off": False, "share": 0.45, "tiny": 1e-06}})) == {
        "a": {"flag": True, "off": False, "share": 0.45, "tiny": 1e-06}
    }
    for value in (float("nan"), float("inf"), None, [1, 2]):
        with pytest.raises(TypeError):
            render_toml({"a": {"value": value}})  # type: ignore[dict-item]


@pytest.fixture
def stub_builders(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model builders stubbed (a file each), for tests of what the pack does around them."""
    import cir_tools.packs.tiny_captioner
    import cir_tools.packs.tiny_encoder
    import cir_tools.packs.tiny_reasoner

    def fake_folder(out_dir: Path, seed: int = 0) -> Path:
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"x" * 2048)
        return out_dir

    def fake_encoder(out_dir: Path, seed: int = 0) -> cir_tools.packs.tiny_encoder.TinyEncoderFiles:
        fake_folder(out_dir)
        weights = out_dir / "model.safetensors"
        return cir_tools.packs.tiny_encoder.TinyEncoderFiles(out_dir, weights, weights, {"lincir": weights})

    monkeypatch.setattr(cir_tools.packs.tiny_encoder, "build_tiny_encoder", fake_encoder)
    monkeypatch.setattr(cir_tools.packs.tiny_captioner, "build_tiny_blip2", fake_folder)
    monkeypatch.setattr(cir_tools.packs.tiny_reasoner, "build_tiny_llm", fake_folder)


@pytest.mark.usefixtures("stub_builders")
def test_echo_lists_every_file_written(tmp_path: Path) -> None:
    # Builders stubbed: this checks the listing only; the real builds are covered by the session pack.
    lines: list[str] = []
    profile = build_tiny_pack(tmp_path, echo=lines.append)
    assert "wrote profile.toml" in " ".join(lines)
    assert "wrote captioner/blip2-tiny/model.safetensors (2.0 KiB)" in lines
    assert lines[-1] == f"pack: {tmp_path.resolve()}"
    assert profile == tmp_path.resolve() / "profile.toml"


def test_every_service_reads_the_pack_profile(tiny_pack: Path) -> None:
    settings = check_profile(tiny_pack)
    assert set(settings) == set(Service)
    assert settings[Service.REASONER].max_model_len == 8192  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("profile", "refusal"),
    [
        ('[encoder]\nclip_modle = "ViT-B-32"\n', "unknown encoder setting(s) clip_modle"),
        ('[retriever]\nmax_concurrent_generative_searches = "one"\n', "max_concurrent_generative_searches"),
        (
            '[reasoner]\nmax_model_len = 8192\n[captioner]\nmodle = "x"\n',
            "unknown captioner setting(s) modle",
        ),
    ],
)
def test_a_profile_key_no_service_takes_is_refused(tmp_path: Path, profile: str, refusal: str) -> None:
    path = tmp_path / "profile.toml"
    path.write_text(profile, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(refusal)):
        check_profile(path)


@pytest.mark.usefixtures("stub_builders")
def test_the_pack_build_fails_on_a_key_it_misspells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cir_tools.packs.tiny as tiny

    def misspelled(tables: dict[str, dict[str, str | int | bool]]) -> str:
        tables["reasoner"] = {**tables["reasoner"], "enforce_eagre": True}
        return render_toml(tables)

    monkeypatch.setattr(tiny, "render_toml", misspelled)
    with pytest.raises(ConfigError, match=re.escape("unknown reasoner setting(s) enforce_eagre")):
        build_tiny_pack(tmp_path, echo=None)


def test_pack_entry_points_import_without_ml_packages() -> None:
    # `cir --help` and `cir models tiny --help` must answer without loading torch/transformers; the
    # builders import them only when they run.
    code = (
        "import sys\n"
        "for name in ('torch', 'tokenizers', 'transformers', 'open_clip'):\n"
        "    sys.modules[name] = None\n"
        "import cir_tools.packs.tokenizer, cir_tools.packs.tiny\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_encoder_part_is_reproducible(tmp_path: Path) -> None:
    from cir_tools.packs.tiny_encoder import build_tiny_encoder

    first = build_tiny_encoder(tmp_path / "a", seed=0)
    second = build_tiny_encoder(tmp_path / "b", seed=0)
    assert first.checkpoint.read_bytes() == second.checkpoint.read_bytes()
    assert first.phi.read_bytes() == second.phi.read_bytes()
