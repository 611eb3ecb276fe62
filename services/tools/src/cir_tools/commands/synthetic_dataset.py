"""`cir synthetic-dataset`: write a CIRCO / CIRR / FashionIQ split in its official layout.

Without `--world`: a tiny split of random shapes, written by the evaluation package (`cir_evaluation.cli`; see
`commands.eval`). With `--world`: a held-out split of the synthetic scene world (`cir_tools.world.datasets`),
1,000 gallery images and 300 queries by default, on which models trained on the world can be scored.
"""

from __future__ import annotations

import argparse

# Defaults of the random-shapes writer, applied when --world is not given (the argument defaults are None so
# that --world can tell an explicit size from its own, larger default).
_PLAIN_GALLERY_SIZE = 12
_PLAIN_QUERIES = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        from cir_evaluation.cli import add_synthetic_arguments
    except ModuleNotFoundError:  # an image without the evaluation package: run() says so when used
        return
    add_synthetic_arguments(parser)
    parser.set_defaults(gallery_size=None, queries=None)
    world = parser.add_argument_group("the scene world (--world)")
    world.add_argument(
        "--world",
        action="store_true",
        help="write a held-out split of the synthetic scene world (default 1000 images, 300 queries)",
    )
    world.add_argument("--seed", type=int, default=0, help="with --world: the split's seed (default 0)")
    world.add_argument(
        "--image-size", type=int, default=64, help="with --world: image side in pixels (default 64)"
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "world", False):
        return _write_world(args)
    from cir_evaluation.cli import write_synthetic

    if args.gallery_size is None:
        args.gallery_size = _PLAIN_GALLERY_SIZE
    if args.queries is None:
        args.queries = _PLAIN_QUERIES
    return write_synthetic(args)


def _write_world(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cir_tools.world.datasets import DEFAULT_GALLERY_SIZE, DEFAULT_NUM_QUERIES, write_world_dataset

    gallery_size = DEFAULT_GALLERY_SIZE if args.gallery_size is None else args.gallery_size
    queries = DEFAULT_NUM_QUERIES if args.queries is None else args.queries
    root = write_world_dataset(
        args.dataset,
        Path(args.out),
        args.split,
        gallery_size=gallery_size,
        num_queries=queries,
        seed=args.seed,
        image_size=args.image_size,
    )
    print(
        f"{args.dataset} {args.split} (scene world, >= {gallery_size} images, {queries} queries, "
        f"seed {args.seed}) written to {root}"
    )
    return 0
