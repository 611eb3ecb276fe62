"""The InstructCIR network (cir_encoder.instructcir) on a tiny real open_clip CLIP."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from open_clip.model import CLIP

from cir_common.errors import ConfigError
from cir_encoder.clip_loading import LoadedClip, load_clip
from cir_encoder.instructcir import (
    CHECKPOINT_FORMAT,
    InstructCirConfig,
    InstructCirNetwork,
    contrastive_loss,
    load_instructcir,
    save_instructcir,
)
from cir_tools.packs.tiny_encoder import TINY_CLIP_NAME, build_tiny_encoder, tiny_clip_config

INSTRUCTIONS = ["make it red", "add a small dog on the left", "the same at night", "remove the background"]
CONFIG = InstructCirConfig(predictor_hidden_dim=64, temperature=0.1, ema_decay=0.9, fusion=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> LoadedClip:
    files = build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))
    return load_clip(TINY_CLIP_NAME, str(files.checkpoint), str(files.config_dir), "cpu", "fp32")


def identity(clip: LoadedClip) -> dict[str, str]:
    return {"model": clip.model_name, "sha256": clip.checkpoint_sha256}


def network(clip: LoadedClip, config: InstructCirConfig = CONFIG, seed: int = 0) -> InstructCirNetwork:
    torch.manual_seed(seed)
    return InstructCirNetwork(clip.model, config)


def images(count: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_every_block_cross_attends_with_image_token_outputs(tiny_clip: LoadedClip) -> None:
    net = network(tiny_clip)
    outputs: list[tuple[int, ...]] = []
    for block in net.tower.blocks:
        block.cross_attn.register_forward_hook(lambda _m, _i, out: outputs.append(tuple(out[0].shape)))
    query = net.encode_query(images(3), tiny_clip.tokenizer(INSTRUCTIONS[:3]))
    # 64 px in 16 px patches: 16 patches + the class token, 64 wide, in each of the 2 blocks.
    assert outputs == [(3, 17, 64), (3, 17, 64)]
    assert query.shape == (3, net.embed_dim) == (3, 32)
    first = net.tower.blocks[0].cross_attn
    assert first.num_heads == tiny_clip.model.visual.transformer.resblocks[0].attn.num_heads
    assert (first.kdim, first.vdim) == (tiny_clip.text_width, tiny_clip.text_width)


def test_with_silent_cross_attention_the_tower_is_the_clip_image_tower(tiny_clip: LoadedClip) -> None:
    net = network(tiny_clip)
    for block in net.tower.blocks:
        torch.nn.init.zeros_(block.cross_attn.out_proj.weight)
    with torch.no_grad():
        words, padding, _ = net._encode_words(tiny_clip.tokenizer(INSTRUCTIONS[:2]))
        ours = net.tower(images(2), words, padding)
        theirs = tiny_clip.model.encode_image(images(2))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_plain_text_embedding_is_the_clip_text_embedding(tiny_clip: LoadedClip) -> None:
    tokens = tiny_clip.tokenizer(INSTRUCTIONS)
    torch.testing.assert_close(network(tiny_clip).encode_text(tokens), tiny_clip.model.encode_text(tokens))


def test_targets_take_no_text_and_only_queries_follow_the_instruction(tiny_clip: LoadedClip) -> None:
    net = network(tiny_clip).eval()
    pictures = images(2)
    with torch.no_grad():
        targets = net.encode_target(pictures)
        red = net.encode_query(pictures, tiny_clip.tokenizer(["make it red"] * 2))
        dog = net.encode_query(pictures, tiny_clip.tokenizer(["add a dog"] * 2))
        assert targets.shape == (2, net.embed_dim)
        assert torch.equal(net.encode_target(pictures), targets)
        assert (red - dog).abs().max() > 1e-3
        # The null-text token is the tower's own: the same image embeds alike whatever the queries said.
        other = net.encode_target(torch.cat([pictures[:1], images(1, seed=7)]))
        torch.testing.assert_close(other[0], targets[0], rtol=0, atol=1e-6)


def test_padding_tokens_are_hidden_from_the_cross_attention(tiny_clip: LoadedClip) -> None:
    net = network(tiny_clip).eval()
    tokens = tiny_clip.tokenizer(["make it red"])
    scrambled = tokens.clone()
    scrambled[tokens == 0] = 320  # an ordinary word id where the tokenizer put padding
    with torch.no_grad():
        # The scrambled ids change the text encoder's outputs at those positions (causal: only there) ...
        words, _, _ = net._encode_words(tokens)
        scrambled_words, padding, _ = net._encode_words(scrambled)
        assert (words - scrambled_words).abs().amax() > 1e-3
        # ... and the query ignores them once they are masked as padding.
        masked = net.tower(images(1), scrambled_words, tokens == 0)
        torch.testing.assert_close(masked, net.tower(images(1), words, tokens == 0), rtol=0, atol=1e-6)
        assert not padding.any()


def test_ema_step_moves_the_target_by_exactly_the_decay(tiny_clip: LoadedClip) -> None:
    net = network(tiny_clip)
    with torch.no_grad():
        for parameter in net.tower.parameters():
            parameter.add_(torch.randn_like(parameter))
    before = {name: p.clone() for name, p in net.target_tower.named_parameters()}
    online = dict(net.tower.named_parameters())
    net.update_target()
    decay = CONFIG.ema_decay
    for name, target in net.target_tower.named_parameters():
        expected = before[name] * decay + online[name] * (1 - decay)
        torch.testing.assert_close(target, expected, rtol=0, atol=1e-6)
        assert not target.requires_grad
    changed = [n for n, p in net.target_tower.named_parameters() if not torch.equal(p, before[n])]
    assert "blocks.0.cross_attn.out_proj.weight" in changed


def colour_images(count: int, seed: int) -> torch.Tensor:
    """Noisy plain colours: images a random CLIP tells apart (pure noise images all embed alike)."""
    generator = torch.Generator().manual_seed(seed)
    colours = (4 * torch.rand(count, 3, 1, 1, generator=generator) - 2).expand(count, 3, 64, 64)
    return colours + 0.3 * torch.randn(count, 3, 64, 64, generator=generator)


def fixed_batch_losses(
    net: InstructCirNetwork, clip: LoadedClip, steps: int = 30
) -> tuple[list[float], torch.Tensor, torch.Tensor]:
    """Eq. 2 losses of `steps` AdamW steps (each followed by an EMA step) on one fixed batch; the batch."""
    pictures, targets = colour_images(6, seed=1), colour_images(6, seed=2)
    tokens = clip.tokenizer(INSTRUCTIONS + INSTRUCTIONS[:2])
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3, weight_decay=0.1)
    losses = []
    for _ in range(steps):
        with torch.no_grad():
            target = net.encode_target(targets)
        loss = contrastive_loss(net.encode_query(pictures, tokens), target, net.config.temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        net.update_target()
        losses.append(float(loss.detach()))
    return losses, pictures, tokens


def test_loss_on_a_fixed_batch_falls(tiny_clip: LoadedClip) -> None:
    net = network(tiny_clip)
    losses, _, _ = fixed_batch_losses(net, tiny_clip)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses
    # The CLIP itself is not trained: its text tower is frozen and none of it is registered in the network.
    assert not any(p.requires_grad for p in tiny_clip.model.parameters())
    assert not any(name.startswith(("transformer.", "token_embedding")) for name in net.state_dict())


RESIDUAL = InstructCirConfig(predictor_hidden_dim=64, temperature=0.1, ema_decay=0.9, residual_query=True)


def test_untrained_residual_variant_is_the_clip_image_only_query(tiny_clip: LoadedClip) -> None:
    net = network(tiny_clip, RESIDUAL).eval()
    pictures, tokens = images(3), tiny_clip.tokenizer(INSTRUCTIONS[:3])
    with torch.no_grad():
        clip_images = tiny_clip.model.encode_image(pictures)
        torch.testing.assert_close(net.encode_query(pictures, tokens), clip_images, rtol=0, atol=1e-5)
        torch.testing.assert_close(net.encode_target(pictures), clip_images, rtol=0, atol=1e-5)
    # The paper's network (Xavier cross-attention output, random predictor) is not.
    paper = network(tiny_clip, CONFIG).eval()
    with torch.no_grad():
        assert not torch.allclose(paper.encode_query(pictures, tokens), clip_images, atol=1e-2)


def test_residual_query_is_the_image_embedding_plus_the_predictor(tiny_clip: LoadedClip) -> None:
    net = network(tiny_clip, RESIDUAL).eval()
    with torch.no_grad():
        for module in (net.predictor[-1], *(b.cross_attn.out_proj for b in net.tower.blocks)):
            module.weight.normal_(0.0, 0.05)
        pictures, tokens = images(2), tiny_clip.tokenizer(INSTRUCTIONS[:2])
        words, padding, text = net._encode_words(tokens)
        image = net.tower(pictures, words, padding)
        expected = image + net.predictor(torch.cat([image, text], dim=-1))
        torch.testing.assert_close(net.encode_query(pictures, tokens), expected)
        assert not torch.allclose(image, tiny_clip.model.encode_image(pictures), atol=1e-3)


def test_residual_variant_learns_and_round_trips(tiny_clip: LoadedClip, tmp_path: Path) -> None:
    net = network(tiny_clip, RESIDUAL)
    losses, pictures, tokens = fixed_batch_losses(net, tiny_clip)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses
    net.eval()
    path = tmp_path / "residual.pt"
    save_instructcir(path, net, clip_identity=identity(tiny_clip), training={})
    loaded = load_instructcir(str(path), tiny_clip.model, identity(tiny_clip))
    assert loaded.config == RESIDUAL
    with torch.no_grad():
        assert torch.equal(loaded.network.encode_query(pictures, tokens), net.encode_query(pictures, tokens))


def test_contrastive_loss_is_cross_entropy_over_cosine_logits() -> None:
    query, target = torch.randn(4, 8), torch.randn(4, 8)
    logits = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(target, dim=-1).T
    expected = torch.nn.functional.cross_entropy(logits / 0.5, torch.arange(4))
    torch.testing.assert_close(contrastive_loss(query, target, 0.5), expected)
    assert contrastive_loss(target, target, 0.01) < contrastive_loss(query, target, 0.01)


def test_fusion_weight_mixes_query_and_text(tiny_clip: LoadedClip) -> None:
    net = network(tiny_clip).eval()
    pictures, tokens = images(2), tiny_clip.tokenizer(INSTRUCTIONS[:2])
    with torch.no_grad():
        net.fusion_logit.fill_(torch.logit(torch.tensor(0.25)))
        query = torch.nn.functional.normalize(net.encode_query(pictures, tokens), dim=-1)
        text = torch.nn.functional.normalize(net.encode_text(tokens), dim=-1)
        expected = torch.nn.functional.normalize(0.25 * query + 0.75 * text, dim=-1)
        torch.testing.assert_close(net.fused_query(pictures, tokens), expected)
    assert net.fusion_weight == pytest.approx(0.25)
    plain = network(tiny_clip, InstructCirConfig(predictor_hidden_dim=64))
    assert plain.fusion_weight is None
    with pytest.raises(ValueError, match="no fusion weight"):
        plain.fused_query(pictures, tokens)


def test_saved_and_loaded_network_embeds_identically(tiny_clip: LoadedClip, tmp_path: Path) -> None:
    net = network(tiny_clip)
    with torch.no_grad():
        for parameter in net.tower.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    net.update_target()
    net.eval()
    path = tmp_path / "instructcir.pt"
    save_instructcir(path, net, clip_identity=identity(tiny_clip), training={"steps": 3, "epochs": 1})
    loaded = load_instructcir(str(path), tiny_clip.model, identity(tiny_clip))
    pictures, tokens = images(3), tiny_clip.tokenizer(INSTRUCTIONS[:3])
    with torch.no_grad():
        assert torch.equal(loaded.network.encode_query(pictures, tokens), net.encode_query(pictures, tokens))
        assert torch.equal(loaded.network.encode_target(pictures), net.encode_target(pictures))
        assert torch.equal(loaded.network.fused_query(pictures, tokens), net.fused_query(pictures, tokens))
    assert loaded.config == CONFIG
    assert loaded.training == {"steps": 3, "epochs": 1}
    assert loaded.clip_identity == identity(tiny_clip)
    assert len(loaded.sha256) == 64 and loaded.path == str(path)
    assert not loaded.network.training
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == CHECKPOINT_FORMAT
    assert not any(key.startswith("target_tower.") for key in payload["state_dict"])
    assert "blocks.0.cross_attn.out_proj.weight" in payload["target_state_dict"]


@pytest.fixture(scope="module")
def checkpoint(tiny_clip: LoadedClip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("instructcir") / "instructcir.pt"
    save_instructcir(path, network(tiny_clip), clip_identity=identity(tiny_clip), training={})
    return path


def test_a_missing_checkpoint_is_a_config_error_naming_it(tiny_clip: LoadedClip, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(ConfigError, match=f"{missing} does not exist.*{CHECKPOINT_FORMAT}"):
        load_instructcir(str(missing), tiny_clip.model, identity(tiny_clip))


def test_files_that_are_not_checkpoints_are_refused(tiny_clip: LoadedClip, tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=f"{text} could not be read as a torch file.*InstructCIR checkpoint"
    ):
        load_instructcir(str(text), tiny_clip.model, identity(tiny_clip))
    phi = tmp_path / "phi.pt"
    torch.save({"Phi": {"weight": torch.zeros(2)}}, phi)
    with pytest.raises(
        ConfigError, match=f"{phi} is not an InstructCIR checkpoint: expected a dict with format"
    ):
        load_instructcir(str(phi), tiny_clip.model, identity(tiny_clip))


def test_another_format_version_is_refused(tiny_clip: LoadedClip, checkpoint: Path, tmp_path: Path) -> None:
    payload = torch.load(checkpoint, weights_only=True)
    payload["format"] = "cir-instructcir/2"
    future = tmp_path / "future.pt"
    torch.save(payload, future)
    with pytest.raises(
        ConfigError, match=f"{future} has format 'cir-instructcir/2'.*reads 'cir-instructcir/1'"
    ):
        load_instructcir(str(future), tiny_clip.model, identity(tiny_clip))


def test_a_checkpoint_of_another_clip_is_refused(tiny_clip: LoadedClip, checkpoint: Path) -> None:
    other = {"model": tiny_clip.model_name, "sha256": "0" * 64}
    with pytest.raises(
        ConfigError, match=f"{checkpoint} was trained on CLIP .*{tiny_clip.checkpoint_sha256}"
    ):
        load_instructcir(str(checkpoint), tiny_clip.model, other)


def test_a_checkpoint_that_does_not_fit_the_clip_shapes_is_refused(
    tiny_clip: LoadedClip, checkpoint: Path
) -> None:
    config = copy.deepcopy(tiny_clip_config())
    config["vision_cfg"]["width"] = 32
    torch.manual_seed(0)
    narrower = CLIP(**config).eval()
    with pytest.raises(ConfigError, match=f"{checkpoint} does not fit the encoder's CLIP: it expects shapes"):
        load_instructcir(str(checkpoint), narrower, identity(tiny_clip))


def test_a_checkpoint_with_another_predictor_size_is_refused(
    tiny_clip: LoadedClip, checkpoint: Path, tmp_path: Path
) -> None:
    payload = torch.load(checkpoint, weights_only=True)
    payload["config"]["predictor_hidden_dim"] = 32
    edited = tmp_path / "edited.pt"
    torch.save(payload, edited)
    with pytest.raises(ConfigError, match=f"{edited} does not fit .*predictor"):
        load_instructcir(str(edited), tiny_clip.model, identity(tiny_clip))
