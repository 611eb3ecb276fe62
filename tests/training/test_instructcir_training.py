"""`cir train instructcir` and its trainer: a tiny real CLIP, generated images, a written triplets file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from cir_encoder.clip_loading import LoadedClip, load_clip
from cir_encoder.instructcir import load_instructcir
from cir_tools.cli import main
from cir_tools.packs.tiny_encoder import TINY_CLIP_NAME, TinyEncoderFiles, build_tiny_encoder
from cir_tools.training.instructcir import (
    FINAL_CHECKPOINT,
    METRICS_FILE,
    RESUME_CHECKPOINT,
    InstructCirTrainingSettings,
    train_instructcir,
)
from cir_tools.training.instructcir_data import Triplet, read_triplets, split_heldout

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (230, 220, 40)}
SHAPES = ("circle", "square")
MODELS = {
    "captioner": {"name": "tiny-blip2", "revision": "r1"},
    "reasoner": {"name": "tiny-llm", "revision": "r2"},
}
SMALL = InstructCirTrainingSettings(
    epochs=2, batch_size=4, lr=1e-3, warmup_steps=1, heldout_fraction=0.25, predictor_hidden_dim=32
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyEncoderFiles:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="module")
def tiny_clip(tiny: TinyEncoderFiles) -> LoadedClip:
    return load_clip(TINY_CLIP_NAME, str(tiny.checkpoint), str(tiny.config_dir), "cpu", "fp32")


def draw(colour: str, shape: str) -> Image.Image:
    image = Image.new("RGB", (80, 64), (128, 128, 128))
    box = (16, 8, 64, 56)
    pen = ImageDraw.Draw(image)
    (pen.ellipse if shape == "circle" else pen.rectangle)(box, fill=COLOURS[colour])
    return image


def line(reference: str, target: str, text: str, outcome: str = "parsed") -> dict[str, object]:
    return {
        "reference_id": reference,
        "target_id": target,
        "reference_uri": f"images/{reference}.png",
        "target_uri": f"images/{target}.png",
        "reference_caption": reference.replace("-", " "),
        "target_caption": target.replace("-", " "),
        "text": text,
        "pairing": "random",
        "outcome": outcome,
        "models": MODELS,
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 images (4 colours x 2 shapes) under root/images, every recolouring as a triplet, plus 2 bad lines."""
    root = tmp_path_factory.mktemp("triplets")
    (root / "images").mkdir()
    ids = [f"{c}-{s}" for c in COLOURS for s in SHAPES]
    for image_id in ids:
        draw(*image_id.split("-")).save(root / "images" / f"{image_id}.png")
    records = [
        line(f"{a}-{shape}", f"{b}-{shape}", f"make it {b}")
        for shape in SHAPES
        for a in COLOURS
        for b in COLOURS
        if a != b
    ]
    records += [
        line("red-circle", "blue-square", "", "parsed"),
        line("red-circle", "blue-circle", "x", "refused"),
    ]
    (root / "triplets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return root


def test_reading_skips_unparsed_and_empty_lines_and_the_split_is_fixed_by_pair_ids(dataset: Path) -> None:
    data = read_triplets(dataset / "triplets.jsonl")
    assert (len(data.triplets), data.skipped) == (24, 2)
    assert data.models == MODELS
    train, heldout = split_heldout(data.triplets, 0.25)
    assert len(train) + len(heldout) == 24 and train and heldout
    # The same pairs are held out whatever the file's order.
    again_train, again_heldout = split_heldout(list(reversed(data.triplets)), 0.25)
    assert {(t.reference_id, t.target_id) for t in again_heldout} == {
        (t.reference_id, t.target_id) for t in heldout
    }
    assert {id(t) for t in again_train} == {id(t) for t in train}
    # A tiny file still gets one triplet on each side.
    two = [Triplet("a", "b", "a.png", "b.png", "x"), Triplet("b", "a", "b.png", "a.png", "y")]
    assert [len(side) for side in split_heldout(two, 0.1)] == [1, 1]
    assert split_heldout(two, 0.0) == (two, [])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json\n", "line 1 is not JSON"),
        ('{"reference_id": "a"}\n', "line 1 lacks target_id, reference_uri, target_uri, text, outcome"),
        ('["a", "b"]\n', "line 1: expected an object"),
    ],
)
def test_malformed_triplet_lines_are_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_triplets(path)


def test_command_trains_a_checkpoint_the_encoder_loads(
    tiny: TinyEncoderFiles,
    tiny_clip: LoadedClip,
    dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "instructcir",
        "--triplets",
        str(dataset / "triplets.jsonl"),
        "--clip",
        str(tiny.config_dir),
    ]
    args += ["--out", str(out), "--images-root", str(dataset), "--epochs", "2", "--batch-size", "4"]
    assert (
        main([*args, "--lr", "1e-3", "--heldout-fraction", "0.25", "--device", "cpu", "--threads", "1"]) == 0
    )
    captured = capsys.readouterr()
    assert f"wrote {out / FINAL_CHECKPOINT}" in captured.out
    assert "2 lines skipped" in captured.err
    assert "epoch 2/2 (main): train loss" in captured.err and "R@1" in captured.err
    metrics = json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    for epoch in metrics["epochs"]:
        assert epoch["train_loss"] > 0 and epoch["heldout_loss"] > 0
        assert 0 <= epoch["recall_at_1"] <= epoch["recall_at_5"] <= epoch["recall_at_10"] == 100.0
    # Trained through the local-dir form, loaded by the encoder's config-dir form: the same weights file.
    identity = {"model": tiny_clip.model_name, "sha256": tiny_clip.checkpoint_sha256}
    loaded = load_instructcir(str(out / FINAL_CHECKPOINT), tiny_clip.model, identity)
    assert loaded.training["epochs"] == 2 and loaded.training["skipped"] == 2
    assert loaded.training["models"] == MODELS
    assert loaded.training["triplets"] + loaded.training["heldout"] == 24
    assert loaded.config.predictor_hidden_dim == 1024 and not loaded.config.fusion
    # A second run into the same folder would overwrite the first: refused unless it resumes.
    assert main([*args, "--device", "cpu"]) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert main([*args, "--device", "cpu", "--resume", "--lr", "0.5"]) == 2
    assert "lr: 0.001 -> 0.5" in capsys.readouterr().err


class Interrupted(Exception):
    pass


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    tiny_clip: LoadedClip, dataset: Path, tmp_path: Path
) -> None:
    data = read_triplets(dataset / "triplets.jsonl")
    whole = train_instructcir(tiny_clip, data, tmp_path / "whole", SMALL, images_root=dataset)
    steps_per_epoch = whole.metrics[0]["steps"]

    def interrupt_in_epoch_two(step: int, _total: int, _loss: float) -> None:
        if step == steps_per_epoch + 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_instructcir(
            tiny_clip, data, tmp_path / "cut", SMALL, images_root=dataset, progress=interrupt_in_epoch_two
        )
    assert torch.load(tmp_path / "cut" / RESUME_CHECKPOINT, weights_only=True)["epochs_done"] == 1
    resumed = train_instructcir(tiny_clip, data, tmp_path / "cut", SMALL, images_root=dataset, resume=True)
    assert [m["epoch"] for m in resumed.metrics] == [1, 2]
    final = torch.load(tmp_path / "cut" / FINAL_CHECKPOINT, weights_only=True)
    expected = torch.load(tmp_path / "whole" / FINAL_CHECKPOINT, weights_only=True)
    for part in ("state_dict", "target_state_dict"):
        assert final[part].keys() == expected[part].keys()
        assert all(torch.equal(final[part][k], expected[part][k]) for k in expected[part]), part
    assert resumed.metrics == whole.metrics
    # The run actually trained: the online and EMA towers moved away from the CLIP's image tower.
    start = tiny_clip.model.visual.state_dict()["conv1.weight"]
    assert not torch.equal(final["state_dict"]["tower.conv1.weight"], start)
    assert not torch.equal(final["target_state_dict"]["conv1.weight"], start)


def test_fusion_stage_learns_the_weight_with_the_towers_frozen(
    tiny_clip: LoadedClip, dataset: Path, tmp_path: Path
) -> None:
    data = read_triplets(dataset / "triplets.jsonl")
    plain = InstructCirTrainingSettings(**{**SMALL.__dict__, "epochs": 1})
    fused = InstructCirTrainingSettings(**{**plain.__dict__, "fusion": True, "fusion_epochs": 1})
    train_instructcir(tiny_clip, data, tmp_path / "plain", plain, images_root=dataset)
    run = train_instructcir(tiny_clip, data, tmp_path / "fused", fused, images_root=dataset)
    assert [m["stage"] for m in run.metrics] == ["main", "fusion"]
    identity = {"model": tiny_clip.model_name, "sha256": tiny_clip.checkpoint_sha256}
    before = load_instructcir(str(tmp_path / "plain" / FINAL_CHECKPOINT), tiny_clip.model, identity).network
    after = load_instructcir(str(tmp_path / "fused" / FINAL_CHECKPOINT), tiny_clip.model, identity).network
    assert after.fusion_weight is not None and after.fusion_weight != pytest.approx(0.5, abs=1e-3)
    towers = before.tower.state_dict(), after.tower.state_dict()
    assert all(torch.equal(towers[0][k], towers[1][k]) for k in towers[0])
    targets = before.target_tower.state_dict(), after.target_tower.state_dict()
    assert all(torch.equal(targets[0][k], targets[1][k]) for k in targets[0])
    assert not torch.equal(before.predictor[0].weight, after.predictor[0].weight)


def test_missing_images_are_listed(tiny_clip: LoadedClip, dataset: Path, tmp_path: Path) -> None:
    data = read_triplets(dataset / "triplets.jsonl")
    with pytest.raises(ValueError, match=r"triplet image\(s\) not found relative to --images-root .*images/"):
        train_instructcir(tiny_clip, data, tmp_path / "run", SMALL, images_root=tmp_path)


@pytest.mark.slow
def test_two_processes_under_torchrun_train_a_loadable_checkpoint(
    tiny: TinyEncoderFiles, tiny_clip: LoadedClip, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "cir_tools.cli", "train", "instructcir", "--triplets", str(dataset / "triplets.jsonl")]
    command += ["--clip", str(tiny.config_dir), "--out", str(out), "--images-root", str(dataset)]
    command += ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--threads", "1"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=environment, check=False
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    # Only rank 0 reports and writes.
    assert finished.stdout.count("wrote ") == 1
    assert "x 2 process(es)" in finished.stderr
    identity = {"model": tiny_clip.model_name, "sha256": tiny_clip.checkpoint_sha256}
    loaded = load_instructcir(str(out / FINAL_CHECKPOINT), tiny_clip.model, identity)
    assert loaded.training["world_size"] == 2
    metrics = json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))["epochs"]
    assert len(metrics) == 1 and metrics[0]["train_loss"] > 0


def test_clip_named_by_a_pack_profile_and_the_residual_variant_flag(
    tiny: TinyEncoderFiles, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "profile.toml"
    profile.write_text(
        f'[encoder]\nclip_model = "{TINY_CLIP_NAME}"\nclip_pretrained = "{tiny.checkpoint}"\n'
        f'clip_config_dir = "{tiny.config_dir}"\n',
        encoding="utf-8",
    )
    out = tmp_path / "run"
    args = ["train", "instructcir", "--triplets", str(dataset / "triplets.jsonl"), "--clip", str(profile)]
    args += ["--out", str(out), "--images-root", str(dataset), "--epochs", "1", "--batch-size", "8"]
    assert main([*args, "--device", "cpu", "--threads", "1", "--residual-query"]) == 0
    payload = torch.load(out / FINAL_CHECKPOINT, weights_only=True)
    assert payload["clip_identity"]["model"] == TINY_CLIP_NAME
    assert payload["config"]["residual_query"] is True
    capsys.readouterr()
    profile.write_text('[encoder]\nclip_model = "no-such-clip"\nclip_pretrained = "x.pt"\n', encoding="utf-8")
    other = ["train", "instructcir", "--triplets", str(dataset / "triplets.jsonl"), "--clip", str(profile)]
    assert main([*other, "--out", str(tmp_path / "other"), "--device", "cpu"]) == 2
    assert "unknown clip model 'no-such-clip'" in capsys.readouterr().err
