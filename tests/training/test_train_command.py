"""`cir train phi`: clear refusals, a real run on the tiny CLIP, and a help that needs no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cir_encoder.clip_loading import load_clip
from cir_encoder.phi import load_phi
from cir_tools.cli import main
from cir_tools.commands.train import read_texts
from cir_tools.packs.tiny_encoder import TINY_CLIP_NAME, TinyEncoderFiles, build_tiny_encoder

CAPTIONS = ["a red circle on the left", "a blue square on the right", "a yellow star", "a green triangle"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyEncoderFiles:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(CAPTIONS) + "\n\n", encoding="utf-8")
    return path


def test_trains_a_phi_the_encoder_loads(
    tiny: TinyEncoderFiles, texts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "phi" / "lincir.pt"
    args = ["train", "phi", "--clip", str(tiny.config_dir), "--texts", str(texts), "--out", str(out)]
    assert main([*args, "--steps", "3", "--batch-size", "2"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    clip = load_clip(TINY_CLIP_NAME, str(tiny.checkpoint), str(tiny.config_dir), "cpu", "fp32")
    phi = load_phi(out, clip.embed_dim, clip.text_width)
    assert phi.architecture == "phi"
    # The config-dir form names the same model; a SEARLE-shaped network comes out in the same format.
    searle = tmp_path / "searle.pt"
    named = ["--clip", TINY_CLIP_NAME, "--pretrained", str(tiny.checkpoint)]
    run = [*named, "--config-dir", str(tiny.config_dir), "--texts", str(texts), "--out", str(searle)]
    assert main(["train", "phi", *run, "--steps", "2", "--network", "searle"]) == 0
    assert set(torch.load(searle, weights_only=True)) == {"Phi"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--texts": "missing.txt"}, "does not exist"),
        ({"--texts": "empty.txt"}, "holds 0 non-empty captions"),
        ({"--clip": "no-such-clip", "--pretrained": "x.pt"}, "unknown clip model 'no-such-clip'"),
        ({"--out": "."}, "is a folder"),
    ],
)
def test_bad_arguments_are_refused_with_what_to_fix(
    tiny: TinyEncoderFiles,
    texts: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, str],
    message: str,
) -> None:
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    options = {"--clip": str(tiny.config_dir), "--texts": str(texts), "--out": str(tmp_path / "phi.pt")}
    for key, value in change.items():
        options[key] = value if key in ("--clip", "--pretrained") else str(tmp_path / value)
    assert main(["train", "phi", *[word for pair in options.items() for word in pair]]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "phi.pt").exists()


def test_numeric_options_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["train", "phi", "--clip", "x", "--texts", "t", "--out", "o", "--steps", "0"])
    assert exit.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_jsonl_texts(tmp_path: Path) -> None:
    path = tmp_path / "texts.jsonl"
    path.write_text('{"text": "a red star"}\n"a blue circle"\n\n{"caption": "a star"}\n', encoding="utf-8")
    assert read_texts(path) == ["a red star", "a blue circle", "a star"]
    path.write_text('{"text": "a red star"}\n{"label": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: expected a string or an object"):
        read_texts(path)


def test_help_imports_no_torch() -> None:
    probe = (
        "import contextlib, io, json, sys\n"
        "for name in ('torch', 'open_clip', 'transformers'):\n"
        "    sys.modules[name] = None\n"
        "from cir_tools.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        main(['train', 'phi', '--help'])\n"
        "    except SystemExit as exit:\n"
        "        code = exit.code\n"
        "print(json.dumps({'code': code, 'help': out.getvalue()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["code"] == 0
    assert "--network {lincir,searle}" in result["help"] and "--texts" in result["help"]
