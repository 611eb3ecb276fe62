"""The tiny CLIP loads through the production loader in every supported form and encodes for real."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from cir_common.errors import ConfigError
from cir_common.torch_placement import resolve_device
from cir_encoder.clip_loading import LoadedClip, cached_file_sha256, load_clip


@pytest.fixture(scope="module")
def clip(tiny_profile: dict[str, Any]) -> LoadedClip:
    encoder = tiny_profile["encoder"]
    return load_clip(
        encoder["clip_model"], encoder["clip_pretrained"], encoder["clip_config_dir"], "cpu", "fp32"
    )


def _image() -> Image.Image:
    # Not square and not the model size, so the preprocess really resizes and crops.
    image = Image.new("RGB", (96, 80), (20, 120, 200))
    image.paste((250, 40, 40), (10, 10, 50, 60))
    return image


def test_dims_and_identity(clip: LoadedClip, tiny_profile: dict[str, Any]) -> None:
    checkpoint = Path(tiny_profile["encoder"]["clip_pretrained"])
    assert clip.model_name == "cir-tiny-clip"
    assert clip.checkpoint_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert (clip.embed_dim, clip.text_width, clip.context_length) == (32, 64, 77)
    assert clip.image_size == (64, 64)
    assert (clip.device, clip.precision) == ("cpu", "fp32")
    assert not clip.model.training
    assert all(not p.requires_grad for p in clip.model.parameters())


def test_encodes_an_image_and_a_text(clip: LoadedClip) -> None:
    pixels = clip.preprocess(_image()).unsqueeze(0)
    assert pixels.shape == (1, 3, 64, 64)
    tokens = clip.tokenizer(["a photo of a red square"])
    assert tokens.shape == (1, 77)
    with torch.no_grad():
        image_embedding = clip.model.encode_image(pixels)
        text_embedding = clip.model.encode_text(tokens)
    assert image_embedding.shape == (1, 32)
    assert text_embedding.shape == (1, 32)
    assert torch.isfinite(image_embedding).all() and torch.isfinite(text_embedding).all()
    assert image_embedding.norm() > 0 and text_embedding.norm() > 0


def test_placeholder_is_clip_token_259(clip: LoadedClip) -> None:
    ids = clip.tokenizer(["$"])[0].tolist()
    assert ids[:3] == [49406, 259, 49407]
    prompt = clip.tokenizer(["a photo of $ that is red"])[0]
    assert (prompt == 259).sum().item() == 1
    assert prompt.argmax().item() == (prompt != 0).sum().item() - 1  # EOT is the max id, at the end


def test_local_dir_form_loads_the_same_weights(clip: LoadedClip, tiny_profile: dict[str, Any]) -> None:
    folder = tiny_profile["encoder"]["clip_config_dir"]
    local = load_clip(f"local-dir:{folder}", None, None, "cpu", "fp32")
    assert local.checkpoint_sha256 == clip.checkpoint_sha256
    assert local.embed_dim == 32 and local.text_width == 64
    pixels = clip.preprocess(_image()).unsqueeze(0)
    tokens = clip.tokenizer(["a dog on a beach"])
    with torch.no_grad():
        assert torch.equal(local.model.encode_image(pixels), clip.model.encode_image(pixels))
        assert torch.equal(local.model.encode_text(tokens), clip.model.encode_text(tokens))


def test_torch_state_dict_checkpoint_loads(
    clip: LoadedClip, tiny_profile: dict[str, Any], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "tiny.pt"
    torch.save(clip.model.state_dict(), checkpoint)
    encoder = tiny_profile["encoder"]
    loaded = load_clip(encoder["clip_model"], str(checkpoint), encoder["clip_config_dir"], "auto", "auto")
    assert loaded.checkpoint_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    tokens = clip.tokenizer(["two cats"])
    with torch.no_grad():
        assert torch.equal(loaded.model.encode_text(tokens), clip.model.encode_text(tokens))


@pytest.mark.parametrize(
    ("model", "pretrained", "message"),
    [
        ("no-such-model", "x.pt", "unknown clip model"),
        ("cir-tiny-clip", None, "has no weights"),
        ("cir-tiny-clip", "/nonexistent/clip.safetensors", "neither an existing file nor a known tag"),
        ("ViT-B-32", "no-such-tag", "neither an existing file nor a known tag"),
    ],
)
def test_bad_configuration_is_a_config_error(
    tiny_profile: dict[str, Any], model: str, pretrained: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_clip(model, pretrained, tiny_profile["encoder"]["clip_config_dir"], "cpu", "fp32")


def test_config_dir_without_configs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds no open_clip model config"):
        load_clip("cir-tiny-clip", "x.pt", str(tmp_path), "cpu", "fp32")


def test_local_dir_refuses_a_separate_checkpoint(tiny_profile: dict[str, Any]) -> None:
    folder = tiny_profile["encoder"]["clip_config_dir"]
    with pytest.raises(ConfigError, match="carries its own weights"):
        load_clip(f"local-dir:{folder}", "other.pt", None, "cpu", "fp32")


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    assert resolve_device("CPU") == "cpu"
    with pytest.raises(ConfigError, match="unknown model device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_a_cached_checkpoint_is_identified_by_its_content_hash(tmp_path: Path) -> None:
    """A pretrained tag loads from the Hugging Face cache, whose blobs are named by their sha256."""
    content = b"checkpoint bytes"
    digest = hashlib.sha256(content).hexdigest()
    blob = tmp_path / "models--timm--clip" / "blobs" / digest
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"not read: the blob's name is its hash")
    snapshot = tmp_path / "models--timm--clip" / "snapshots" / "0123abc" / "open_clip_model.safetensors"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(blob)
    assert cached_file_sha256(snapshot) == digest

    plain = tmp_path / "ViT-L-14.pt"  # a URL download: no hash in its name, so the bytes are hashed
    plain.write_bytes(content)
    assert cached_file_sha256(plain) == digest


def test_a_pretrained_tag_is_identified_by_its_cached_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """Without any hub request: the tag's hub file is looked up in the local cache, blob name = sha256."""
    from huggingface_hub import constants

    from cir_encoder.clip_loading import _downloaded_tag_identity

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert _downloaded_tag_identity("ViT-B-32", "openai", "tag:openai") == "tag:openai"  # nothing cached

    digest = hashlib.sha256(b"weights").hexdigest()
    repo = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / digest).write_bytes(b"weights")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").symlink_to(repo / "blobs" / digest)
    assert _downloaded_tag_identity("ViT-B-32", "openai", "tag:openai") == digest
