"""InstructCIR training (method.md 4.2, docs/instructcir.md): Eq. 2 on generated triplets, then Eq. 3.

Main stage: the query tower (copied CLIP ViT + cross-attention) and the predictor learn from InfoNCE between
queries (reference image + instruction) and targets from the EMA target tower (null text), which takes one EMA
step after every optimiser step. With `fusion`, a second stage freezes the towers and trains the predictor and
Eq. 3's fusion weight on the fused query. AdamW (no decay on gains, biases, embeddings), linear warmup then
cosine decay per stage.

One process (CPU or one GPU) or many under torchrun (DistributedDataParallel, DistributedSampler; the batch
size is per process and each process's batch gives its own negatives). AMP (fp16 autocast + GradScaler) on
CUDA only. The data order of an epoch depends only on (seed, epoch), and `last.pt` holds everything else that
moves (weights, EMA, optimiser, schedule, scaler, RNG), so a resumed run ends with the same weights as an
uninterrupted one. Rank 0 writes `instructcir.pt`, `last.pt` and `metrics.json` after every epoch.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from cir_common.vocabulary import Preprocessing
from cir_encoder.clip_loading import LoadedClip
from cir_encoder.instructcir import (
    InstructCirConfig,
    InstructCirNetwork,
    contrastive_loss,
    save_instructcir,
)
from cir_encoder.instructcir_serving import clip_identity
from cir_encoder.preprocessing import build_image_transform
from cir_tools.training.clip import warmup_cosine
from cir_tools.training.instructcir_data import (
    Triplet,
    TripletFile,
    TripletImages,
    check_images,
    split_heldout,
)
from cir_tools.training.instructcir_distributed import (
    DistributedContext,
    barrier,
    mean_over_processes,
)
from cir_tools.training.progress import Progress

FINAL_CHECKPOINT = "instructcir.pt"
RESUME_CHECKPOINT = "last.pt"
METRICS_FILE = "metrics.json"
RESUME_FORMAT = "cir-instructcir-resume/1"
RECALL_KS: tuple[int, ...] = (1, 5, 10)
MAIN_STAGE = "main"
FUSION_STAGE = "fusion"
# The encoder's default preprocessing (EncoderSettings): what is trained on is what is served.
TARGET_PAD_RATIO = 1.25
# Settings a resumed run may change without changing its result.
_RESUMABLE_CHANGES = frozenset({"workers"})


@dataclass(frozen=True)
class InstructCirTrainingSettings:
    """The run: epochs, optimiser, split, Eq. 3 stage and the network's own constants."""

    epochs: int = 10
    # Per process; each process's batch is its own set of negatives.
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    heldout_fraction: float = 0.1
    fusion: bool = False
    fusion_epochs: int = 1
    # The fusion logit's own rate: it is one scalar and must move in a short stage.
    fusion_lr: float = 1e-2
    temperature: float = 0.07
    ema_decay: float = 0.995
    predictor_hidden_dim: int = 1024
    # InstructCirConfig.residual_query: the network's named variant (False: the paper's).
    residual_query: bool = False
    seed: int = 0
    workers: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "fusion_epochs", "predictor_hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "fusion_lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.workers < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps, workers and weight_decay must not be negative")

    def network_config(self) -> InstructCirConfig:
        return InstructCirConfig(
            predictor_hidden_dim=self.predictor_hidden_dim,
            temperature=self.temperature,
            ema_decay=self.ema_decay,
            fusion=self.fusion,
            residual_query=self.residual_query,
        )

    def stages(self) -> list[str]:
        """The stage of each epoch, in order."""
        return [MAIN_STAGE] * self.epochs + [FUSION_STAGE] * (self.fusion_epochs if self.fusion else 0)


@dataclass(frozen=True)
class TrainingRun:
    """What a finished run wrote and measured (metrics: one dict per epoch, as in metrics.json)."""

    checkpoint: Path
    metrics: list[dict[str, Any]]
    train_triplets: int
    heldout_triplets: int
    skipped: int


@dataclass
class _Stage:
    name: str
    model: torch.nn.Module  # the network, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


def train_instructcir(
    clip: LoadedClip,
    data: TripletFile,
    out_dir: Path,
    settings: InstructCirTrainingSettings = InstructCirTrainingSettings(),
    *,
    images_root: Path | None = None,
    resume: bool = False,
    context: DistributedContext | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainingRun:
    """Train on `data` with `clip` (fp32, on `context.device`); checkpoints and metrics go to `out_dir`."""
    context = context or DistributedContext(rank=0, world_size=1, device=clip.device)
    say = log if log is not None and context.is_main else (lambda _line: None)
    train, heldout = split_heldout(data.triplets, settings.heldout_fraction)
    per_process = len(train) // context.world_size
    if per_process < 2:
        raise ValueError(
            f"{len(train)} training triplets for {context.world_size} process(es): each process needs at "
            f"least 2 (a contrastive batch); generate more triplets or lower --heldout-fraction"
        )
    check_images(train + heldout, images_root)
    resume_file = out_dir / RESUME_CHECKPOINT
    if resume_file.exists() and not resume:
        raise ValueError(
            f"{resume_file} holds an earlier run; pass --resume to continue it, or choose another --out"
        )
    if resume and not resume_file.is_file():
        raise ValueError(f"--resume: {resume_file} does not exist; nothing to continue")

    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    identity = clip_identity(clip)
    transform = build_image_transform(Preprocessing.TARGETPAD, clip.preprocess, TARGET_PAD_RATIO)
    train_set = _dataset(train, clip, transform, images_root)
    heldout_set = _dataset(heldout, clip, transform, images_root)
    batch_size = min(settings.batch_size, per_process)
    sampler = DistributedSampler(
        train_set, num_replicas=context.world_size, rank=context.rank, seed=settings.seed, drop_last=True
    )
    loader = DataLoader(
        train_set, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=settings.workers
    )

    torch.manual_seed(settings.seed)
    network = InstructCirNetwork(clip.model, settings.network_config())
    stages = settings.stages()
    steps_per_epoch = len(loader)
    metrics: list[dict[str, Any]] = []
    first_epoch, step = 0, 0
    saved: dict[str, Any] | None = None
    if resume:
        saved = _read_resume_state(resume_file, settings, data, identity)
        network.load_state_dict(saved["network"])
        first_epoch, step, metrics = int(saved["epochs_done"]), int(saved["steps"]), list(saved["metrics"])
        _restore_rng(saved["rng"], context)
        say(f"resuming {resume_file} after epoch {first_epoch} of {len(stages)}")
        if first_epoch >= len(stages):
            say(f"{resume_file} finished all {len(stages)} epochs already; {FINAL_CHECKPOINT} is its result")

    say(
        f"training InstructCIR on {len(train)} triplets ({len(heldout)} held out, {data.skipped} lines "
        f"skipped: not parsed or empty text), {len(stages)} epochs x {steps_per_epoch} steps of "
        f"{batch_size} per process x {context.world_size} process(es) on {context.device}"
    )
    stage: _Stage | None = None
    for epoch in range(first_epoch, len(stages)):
        if stage is None or stage.name != stages[epoch]:
            stage = None
            gc.collect()  # the previous stage's DDP reducer must let go of its gradient hooks first
            stage_steps = steps_per_epoch * stages.count(stages[epoch])
            stage = _start_stage(network, stages[epoch], settings, stage_steps, context)
            if saved is not None and saved["stage"] == stage.name:
                stage.optimizer.load_state_dict(saved["optimizer"])
                stage.schedule.load_state_dict(saved["schedule"])
                stage.scaler.load_state_dict(saved["scaler"])
            saved = None
        sampler.set_epoch(epoch)
        network.train()
        losses = []
        for references, tokens, targets in loader:
            loss = _step(network, stage, references, tokens, targets, context.device, settings.temperature)
            losses.append(loss)
            step += 1
            if progress is not None and context.is_main:
                progress(step, steps_per_epoch * len(stages), loss)
        train_loss = mean_over_processes(sum(losses) / len(losses), context)
        network.eval()
        if context.is_main:
            figures = {"epoch": epoch + 1, "stage": stage.name, "steps": step, "train_loss": train_loss}
            fused = stage.name == FUSION_STAGE
            figures.update(
                evaluate_heldout(
                    network, heldout_set, batch_size, context.device, fused, settings.temperature
                )
            )
            metrics.append(figures)
            say(_epoch_line(figures, len(stages)))
            training = _training_record(settings, data, train, heldout, epoch + 1, step, metrics, context)
            save_instructcir(out_dir / FINAL_CHECKPOINT, network, clip_identity=identity, training=training)
            _write_resume_state(
                resume_file, network, stage, settings, data, identity, epoch + 1, step, metrics
            )
            _write_json(out_dir / METRICS_FILE, {"epochs": metrics, "training": training})
        barrier(context)
    return TrainingRun(
        checkpoint=out_dir / FINAL_CHECKPOINT,
        metrics=metrics,
        train_triplets=len(train),
        heldout_triplets=len(heldout),
        skipped=data.skipped,
    )


def _dataset(
    triplets: Sequence[Triplet],
    clip: LoadedClip,
    transform: Callable[..., torch.Tensor],
    images_root: Path | None,
) -> TripletImages:
    tokens = clip.tokenizer([t.text for t in triplets]) if triplets else torch.zeros(0, 1, dtype=torch.long)
    return TripletImages(triplets, tokens, transform, images_root)


def _start_stage(
    network: InstructCirNetwork,
    name: str,
    settings: InstructCirTrainingSettings,
    stage_steps: int,
    context: DistributedContext,
) -> _Stage:
    """Set which parameters learn in stage `name`, and build its optimiser, schedule and DDP wrapper."""
    network.requires_grad_(False)
    if name == MAIN_STAGE:
        network.tower.requires_grad_(True)
        # The null token only reaches the loss through the EMA copy, which gets no gradient.
        network.tower.null_token.requires_grad_(False)
        network.predictor.requires_grad_(True)
        groups = _decay_groups(network, settings.weight_decay)
    else:
        network.predictor.requires_grad_(True)
        assert network.fusion_logit is not None
        network.fusion_logit.requires_grad_(True)
        groups = [
            *_decay_groups(network.predictor, settings.weight_decay),
            {"params": [network.fusion_logit], "weight_decay": 0.0, "lr": settings.fusion_lr},
        ]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr)
    warmup = min(settings.warmup_steps, max(stage_steps // 10, 1))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, stage_steps))
    cuda = context.device.startswith("cuda")
    model: torch.nn.Module = network
    if context.distributed:
        model = DistributedDataParallel(
            network, device_ids=[torch.device(context.device).index] if cuda else None
        )
    return _Stage(name, model, optimizer, schedule, torch.amp.GradScaler("cuda", enabled=cuda))


def _decay_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # As CLIP trains: no decay on gains, biases, the class token and the position embeddings.
    decayed, exempt = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        (exempt if parameter.ndim < 2 or "embedding" in name else decayed).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


def _step(
    network: InstructCirNetwork,
    stage: _Stage,
    references: torch.Tensor,
    tokens: torch.Tensor,
    targets: torch.Tensor,
    device: str,
    temperature: float,
) -> float:
    """One optimiser step on a batch; the EMA target moves after it in the main stage. Returns the loss."""
    references, tokens, targets = references.to(device), tokens.to(device), targets.to(device)
    with torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
        with torch.no_grad():
            target = network.encode_target(targets)
        query = stage.model(references, tokens, fused=stage.name == FUSION_STAGE)
        loss = contrastive_loss(query, target, temperature)
    stage.optimizer.zero_grad(set_to_none=True)
    stage.scaler.scale(loss).backward()
    stage.scaler.step(stage.optimizer)
    stage.scaler.update()
    stage.schedule.step()
    if stage.name == MAIN_STAGE:
        network.update_target()
    return float(loss.detach())


@torch.no_grad()
def evaluate_heldout(
    network: InstructCirNetwork,
    heldout: TripletImages,
    batch_size: int,
    device: str,
    fused: bool,
    temperature: float,
) -> dict[str, float | None]:
    """Eq. 2 loss over held-out batches, and R@k (percent) of each held-out query among the held-out targets
    (one gallery entry per target id, the reference kept). None when nothing is held out."""
    keys = ["heldout_loss", *(f"recall_at_{k}" for k in RECALL_KS)]
    if len(heldout) == 0:
        return dict.fromkeys(keys)
    queries, targets, losses, weights = [], [], [], []
    for references, tokens, pictures in DataLoader(heldout, batch_size=batch_size):
        references, tokens, pictures = references.to(device), tokens.to(device), pictures.to(device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
            query = (
                network.fused_query(references, tokens) if fused else network.encode_query(references, tokens)
            )
            target = network.encode_target(pictures)
        queries.append(F.normalize(query.float(), dim=-1))
        targets.append(F.normalize(target.float(), dim=-1))
        if len(query) >= 2:
            losses.append(float(contrastive_loss(query, target, temperature)) * len(query))
            weights.append(len(query))
    target_ids = [t.target_id for t in heldout.triplets]
    gallery_ids = list(dict.fromkeys(target_ids))
    first_row = {target_id: target_ids.index(target_id) for target_id in gallery_ids}
    gallery = torch.cat(targets)[[first_row[i] for i in gallery_ids]]
    scores = torch.cat(queries) @ gallery.T
    positives = torch.tensor([gallery_ids.index(i) for i in target_ids], device=scores.device)
    ranks = (scores > scores.gather(1, positives[:, None])).sum(dim=1)
    figures: dict[str, float | None] = {"heldout_loss": sum(losses) / sum(weights) if weights else None}
    for k in RECALL_KS:
        figures[f"recall_at_{k}"] = 100.0 * float((ranks < k).float().mean())
    return figures


def _epoch_line(figures: dict[str, Any], epochs: int) -> str:
    def shown(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    recalls = " ".join(f"R@{k} {shown(figures[f'recall_at_{k}'], 1)}" for k in RECALL_KS)
    return (
        f"epoch {figures['epoch']}/{epochs} ({figures['stage']}): train loss {figures['train_loss']:.4f}, "
        f"held-out loss {shown(figures['heldout_loss'], 4)}, {recalls}"
    )


def _training_record(
    settings: InstructCirTrainingSettings,
    data: TripletFile,
    train: Sequence[Triplet],
    heldout: Sequence[Triplet],
    epochs: int,
    steps: int,
    metrics: list[dict[str, Any]],
    context: DistributedContext,
) -> dict[str, Any]:
    """The checkpoint's `training` entry (plain values only: the checkpoint loads with weights_only)."""
    return {
        "epochs": epochs,
        "steps": steps,
        "triplets": len(train),
        "heldout": len(heldout),
        "skipped": data.skipped,
        "triplets_file": str(data.path),
        "triplets_sha256": data.sha256,
        "models": data.models,
        "world_size": context.world_size,
        "settings": dataclasses.asdict(settings),
        "metrics": dict(metrics[-1]),
    }


def _write_resume_state(
    path: Path,
    network: InstructCirNetwork,
    stage: _Stage,
    settings: InstructCirTrainingSettings,
    data: TripletFile,
    identity: dict[str, str],
    epochs_done: int,
    steps: int,
    metrics: list[dict[str, Any]],
) -> None:
    state = {
        "format": RESUME_FORMAT,
        "settings": dataclasses.asdict(settings),
        "triplets_sha256": data.sha256,
        "clip_identity": identity,
        "epochs_done": epochs_done,
        "steps": steps,
        "stage": stage.name,
        "network": network.state_dict(),
        "optimizer": stage.optimizer.state_dict(),
        "schedule": stage.schedule.state_dict(),
        "scaler": stage.scaler.state_dict(),
        "metrics": metrics,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    partial = path.with_name(f".{path.name}.partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _read_resume_state(
    path: Path, settings: InstructCirTrainingSettings, data: TripletFile, identity: dict[str, str]
) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise ValueError(
            f"{path} is not an InstructCIR resume state ({RESUME_FORMAT}); remove it or use another --out"
        )
    before, now = state["settings"], dataclasses.asdict(settings)
    changed = sorted(k for k in now if k not in _RESUMABLE_CHANGES and before.get(k) != now[k])
    if changed:
        listed = ", ".join(f"{k}: {before.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(
            f"--resume with other settings than {path} was trained with ({listed}); use the same"
        )
    if state["triplets_sha256"] != data.sha256:
        raise ValueError(
            f"--resume: {data.path} is not the triplets file {path} was trained on (sha256 differs)"
        )
    if state["clip_identity"].get("sha256") != identity["sha256"]:
        raise ValueError(f"--resume: {path} was trained on CLIP {state['clip_identity']}, not {identity}")
    return state


def _restore_rng(rng: dict[str, Any], context: DistributedContext) -> None:
    torch.set_rng_state(rng["torch"])
    if context.device.startswith("cuda") and rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])


def _write_json(path: Path, content: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
