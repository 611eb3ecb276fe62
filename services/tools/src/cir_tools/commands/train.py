"""`cir train`: trainers of the suite's models (`cir train phi`: a mapping network from text only).

`cir train phi` trains a Phi for any open_clip CLIP with LinCIR's text-only recipe (or the SEARLE-shaped
network, `--network searle`), which gives textual-inversion strategies to backbones without a published Phi.
`--clip`, `--pretrained` and `--config-dir` take what the encoder's clip_model / clip_pretrained /
clip_config_dir settings take (a folder with open_clip_config.json also works as `--clip DIR`), and the model
is loaded by the encoder's own loader. torch is imported only when a trainer runs, not for `--help`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cir_tools.training.progress import Progress

_NETWORKS = ("lincir", "searle")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    trainers = parser.add_subparsers(dest="train_command", required=True, metavar="TRAINER")
    phi = trainers.add_parser(
        "phi",
        help="train a mapping network (Phi) for a CLIP model from text only (LinCIR's recipe)",
        description="Train a Phi for an open_clip CLIP from captions alone (LinCIR's recipe); the result "
        "is saved as LinCIR publishes it ({'Phi': state_dict}) and loads as an encoder mapping network.",
    )
    phi.add_argument(
        "--clip",
        required=True,
        help="open_clip model name, 'local-dir:PATH', or a folder holding open_clip_config.json",
    )
    phi.add_argument("--pretrained", help="weights file (or pretrained tag) for a model name")
    phi.add_argument("--config-dir", help="folder of <model name>.json configs for a custom architecture")
    phi.add_argument(
        "--texts", required=True, help="captions: a .txt file (one per line) or .jsonl ('text' or 'caption')"
    )
    phi.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    phi.add_argument("--network", choices=_NETWORKS, default="lincir", help="objective (default: lincir)")
    phi.add_argument("--steps", type=_positive_int, default=400, help="training steps (default: 400)")
    phi.add_argument("--batch-size", type=_positive_int, default=64, help="texts per step (default: 64)")
    phi.add_argument("--lr", type=_positive_float, default=5e-4, help="peak learning rate (default: 5e-4)")
    phi.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    phi.add_argument("--threads", type=_positive_int, default=2, help="torch CPU threads (default: 2)")
    _add_instructcir_arguments(trainers)


def run(args: argparse.Namespace) -> int:
    if args.train_command == "instructcir":
        return _train_instructcir(args)
    return _train_phi(args)


def _add_instructcir_arguments(trainers: argparse._SubParsersAction) -> None:
    parser = trainers.add_parser(
        "instructcir",
        help="train an InstructCIR network on `cir triplets` output (docs/instructcir.md)",
        description="Train InstructCIR (a CLIP ViT with cross-attention to the instruction, EMA target "
        "encoder, batch contrastive loss) on a triplets JSONL. Writes OUT/instructcir.pt (the encoder's "
        "instructcir_checkpoint), OUT/last.pt (to --resume) and OUT/metrics.json after every epoch. Under "
        "torchrun (WORLD_SIZE > 1) each process takes one GPU and --batch-size is per process.",
    )
    parser.add_argument("--triplets", required=True, help="JSONL written by `cir triplets`")
    parser.add_argument(
        "--clip",
        required=True,
        help="open_clip model name, 'local-dir:PATH', a folder holding open_clip_config.json, or a profile "
        ".toml whose [encoder] names the CLIP (a model pack's profile.toml)",
    )
    parser.add_argument("--pretrained", help="weights file (or pretrained tag) for a model name")
    parser.add_argument("--config-dir", help="folder of <model name>.json configs for a custom architecture")
    parser.add_argument("--out", required=True, help="folder for instructcir.pt, last.pt and metrics.json")
    parser.add_argument("--images-root", help="folder the triplets' relative image paths start from")
    parser.add_argument("--epochs", type=_positive_int, default=10, help="main-stage epochs (default: 10)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="per process (default: 32)")
    parser.add_argument("--lr", type=_positive_float, default=1e-4, help="peak learning rate (default: 1e-4)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default: 0.1)")
    parser.add_argument(
        "--heldout-fraction", type=float, default=0.1, help="share of pairs held out (default: 0.1)"
    )
    parser.add_argument(
        "--fusion", action="store_true", help="then fine-tune Eq. 3's fusion weight with the towers frozen"
    )
    parser.add_argument(
        "--fusion-epochs", type=_positive_int, default=1, help="epochs of the --fusion stage (default: 1)"
    )
    parser.add_argument(
        "--residual-query",
        action="store_true",
        help="the residual variant (not the paper's): query = image embedding + predictor output, new layers "
        "zero-initialised so training starts from image_only (docs/instructcir.md)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in OUT/last.pt")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--workers", type=int, default=0, help="image loading processes (default: 0)")
    parser.add_argument("--threads", type=_positive_int, default=2, help="torch CPU threads (default: 2)")


def _train_instructcir(args: argparse.Namespace) -> int:
    import torch

    from cir_common.errors import ConfigError
    from cir_encoder.clip_loading import load_clip
    from cir_tools.training.clip_source import clip_source
    from cir_tools.training.instructcir import InstructCirTrainingSettings, train_instructcir
    from cir_tools.training.instructcir_data import read_triplets
    from cir_tools.training.instructcir_distributed import start_distributed, stop_distributed

    data = read_triplets(Path(args.triplets))
    if not data.triplets:
        raise ValueError(f"--triplets {args.triplets} holds no usable triplet ({data.skipped} lines skipped)")
    settings = InstructCirTrainingSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        heldout_fraction=args.heldout_fraction,
        fusion=args.fusion,
        fusion_epochs=args.fusion_epochs,
        residual_query=args.residual_query,
        seed=args.seed,
        workers=args.workers,
    )
    torch.set_num_threads(args.threads)
    try:
        context = start_distributed(args.device)
        model, pretrained, config_dir = clip_source(args.clip, args.pretrained, args.config_dir)
        clip = load_clip(model, pretrained, config_dir, context.device, "fp32")
    except ConfigError as error:
        raise ValueError(error.message) from error
    try:
        run = train_instructcir(
            clip,
            data,
            Path(args.out),
            settings,
            images_root=Path(args.images_root) if args.images_root else None,
            resume=args.resume,
            context=context,
            progress=_progress_bar("instructcir"),
            log=lambda line: print(line, file=sys.stderr),
        )
    finally:
        stop_distributed(context)
    if context.is_main:
        print(f"wrote {run.checkpoint} (set the encoder's instructcir_checkpoint to it)")
    return 0


def _progress_bar(label: str) -> Progress:
    """The `cir` progress bar, as every trainer's (step, total, loss) callback."""
    from cir_tools.training.progress import ProgressBar

    return ProgressBar(label)


def _train_phi(args: argparse.Namespace) -> int:
    texts = read_texts(Path(args.texts))
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the checkpoint file to write, e.g. {out}/phi.pt")

    import torch

    from cir_common.errors import ConfigError
    from cir_encoder.clip_loading import LOCAL_DIR_PREFIX, load_clip
    from cir_tools.packs.tiny_encoder import save_phi
    from cir_tools.training.phi import PhiTrainingSettings, train_phi

    torch.set_num_threads(args.threads)
    model = args.clip
    if Path(model).is_dir() and (Path(model) / "open_clip_config.json").is_file():
        model = f"{LOCAL_DIR_PREFIX}{Path(model).resolve()}"
    try:
        clip = load_clip(model, args.pretrained, args.config_dir, "cpu", "fp32")
    except ConfigError as error:
        raise ValueError(error.message) from error
    settings = PhiTrainingSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    print(
        f"training a {args.network} Phi for {clip.model_name} (embedding {clip.embed_dim} -> token "
        f"{clip.text_width}) on {len(texts)} texts, {settings.steps} steps",
        file=sys.stderr,
    )
    progress = _progress_bar(f"{args.network} phi")
    phi = train_phi(clip.model, clip.tokenizer, texts, settings, network=args.network, progress=progress)
    save_phi(phi, out)
    print(f"wrote {out} ({args.network}; use it as an encoder mapping network)")
    return 0


def read_texts(path: Path) -> list[str]:
    """Captions from a .txt (one per line) or .jsonl file (a string, or an object's 'text' / 'caption')."""
    if not path.is_file():
        raise ValueError(f"--texts {path} does not exist; give a .txt (one caption a line) or .jsonl file")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        texts = [_jsonl_text(line, path, number) for number, line in enumerate(lines, 1) if line.strip()]
    else:
        texts = [line.strip() for line in lines]
    texts = [text for text in texts if text]
    if len(texts) < 2:
        raise ValueError(f"--texts {path} holds {len(texts)} non-empty captions; Phi needs at least 2")
    return texts


def _jsonl_text(line: str, path: Path, number: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"--texts {path} line {number} is not JSON: {error.msg}") from error
    if isinstance(record, str):
        return record.strip()
    if isinstance(record, dict):
        for key in ("text", "caption"):
            if isinstance(record.get(key), str):
                return record[key].strip()
    raise ValueError(f"--texts {path} line {number}: expected a string or an object with 'text' or 'caption'")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
