"""Phi checkpoints (LinCIR/SEARLE and Pic2Word formats) through the production loader."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from cir_common.errors import ConfigError
from cir_encoder.clip_loading import load_clip
from cir_encoder.phi import Phi, Pic2WordMapping, load_phi


def test_pack_phi_fits_the_pack_clip(tiny_profile: dict[str, Any]) -> None:
    encoder = tiny_profile["encoder"]
    clip = load_clip(
        encoder["clip_model"], encoder["clip_pretrained"], encoder["clip_config_dir"], "cpu", "fp32"
    )
    path = Path(encoder["mapping_networks"]["lincir"])
    phi = load_phi(path, clip.embed_dim, clip.text_width)
    assert (phi.architecture, phi.input_dim, phi.hidden_dim, phi.token_dim) == ("phi", 32, 128, 64)
    assert phi.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not phi.module.training
    saved = torch.load(path, map_location="cpu", weights_only=True)["Phi"]
    assert sorted(saved) == sorted(phi.module.state_dict())
    assert all(torch.equal(saved[key], value) for key, value in phi.module.state_dict().items())
    # The pseudo token of a real image embedding has the text width, ready for injection.
    pixels = clip.preprocess(Image.new("RGB", (64, 64), (0, 200, 0))).unsqueeze(0)
    with torch.no_grad():
        token = phi.module(clip.model.encode_image(pixels))
    assert token.shape == (1, clip.text_width)
    assert torch.isfinite(token).all()


def test_lincir_file_gives_the_token_of_the_module_it_was_saved_from(tmp_path: Path) -> None:
    torch.manual_seed(3)
    original = Phi(32, 64).eval()
    assert set(original.state_dict()) == {f"layers.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")}
    path = tmp_path / "phi.pt"
    torch.save({"Phi": original.state_dict()}, path)
    loaded = load_phi(path, 32, 64)
    embeddings = torch.randn(5, 32)
    with torch.no_grad():
        assert torch.equal(loaded.module(embeddings), original(embeddings))


def test_loaded_phi_runs_in_eval_mode_so_dropout_is_off(tmp_path: Path) -> None:
    torch.manual_seed(4)
    path = tmp_path / "phi.pt"
    torch.save({"Phi": Phi(32, 64).state_dict()}, path)
    module = load_phi(path, 32, 64).module
    embedding = torch.randn(1, 32)
    with torch.no_grad():
        assert torch.equal(module(embedding), module(embedding))


def test_pic2word_checkpoint_with_module_prefixes(tmp_path: Path) -> None:
    torch.manual_seed(5)
    original = Pic2WordMapping(32, 64, hidden_dim=48, num_blocks=2).eval()
    path = tmp_path / "pic2word.pt"
    torch.save(
        {
            "epoch": 3,
            "name": "pic2word-tiny",
            "state_dict": {"module.logit_scale": torch.ones([])},
            "state_dict_img2text": {f"module.{k}": v for k, v in original.state_dict().items()},
        },
        path,
    )
    loaded = load_phi(path, 32, 64)
    assert (loaded.architecture, loaded.input_dim, loaded.hidden_dim, loaded.token_dim) == (
        "pic2word",
        32,
        48,
        64,
    )
    embeddings = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.equal(loaded.module(embeddings), original(embeddings))


def test_dims_that_do_not_fit_the_clip_model_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "phi-vit-b-32.pt"
    torch.save({"Phi": Phi(512, 512).state_dict()}, path)
    with pytest.raises(ConfigError) as caught:
        load_phi(path, 32, 64)
    message = caught.value.message
    assert "512" in message and "32" in message and "64" in message and str(path) in message


def test_token_dim_mismatch_alone_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "phi.pt"
    torch.save({"Phi": Phi(32, 128).state_dict()}, path)
    with pytest.raises(ConfigError, match="text width 64"):
        load_phi(path, 32, 64)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"encoder": {"weight": torch.zeros(2)}}, "no 'Phi' or 'state_dict_img2text' entry"),
        ({"Phi": {"fc.weight": torch.zeros(2, 2)}}, "neither the Phi layout"),
        ([torch.zeros(2)], "not a dict of weights"),
        (
            {"Phi": {"layers.0.weight": torch.zeros(8, 4), "when": datetime.datetime(2024, 1, 1)}},
            "not loaded",
        ),
    ],
)
def test_files_that_are_not_phi_checkpoints(tmp_path: Path, payload: object, message: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ConfigError, match=message):
        load_phi(path, 32, 64)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_phi(tmp_path / "absent.pt", 32, 64)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match=r"not a readable torch file|not loaded"):
        load_phi(garbage, 32, 64)
