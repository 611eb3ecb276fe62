"""The world CLIP's ceiling: rank the heldout CIRR-layout gallery by each query's TRUE target caption.

  .venv/bin/python bench/world_ceiling.py --pack ~/.cache/cir/world-pack --out bench/results/ceiling.json

Every text-side strategy (edited captions, pseudo-token prompts) can at best produce the target's own
caption, so text -> image recall with that caption bounds what they reach with this CLIP. Same split and
protocol as bench/world_bench.py (CIRR: the reference is removed from each ranking).

Keys: `recall_at_1`, `recall_at_5`, `recall_at_10` (percent), `queries`, `gallery_images`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from PIL import Image

from cir_encoder.clip_loading import load_clip
from cir_evaluation.datasets import load_split
from cir_evaluation.model import DatasetName, Split
from cir_tools.packs.tiny_encoder import CLIP_CHECKPOINT_NAME
from cir_tools.packs.world_stages import CLIP_DIR
from cir_tools.training.clip import WORLD_CLIP_NAME
from cir_tools.world.datasets import scenes_file, write_world_dataset


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pack", required=True, help="a built world pack (cir models world)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()

    pack = Path(args.pack).expanduser()
    clip = load_clip(
        WORLD_CLIP_NAME, str(pack / CLIP_DIR / CLIP_CHECKPOINT_NAME), str(pack / CLIP_DIR), "cpu", "fp32"
    )
    with tempfile.TemporaryDirectory(prefix="world-ceiling-") as scratch:
        root = write_world_dataset(DatasetName.CIRR, Path(scratch), Split.VAL)
        split = load_split(DatasetName.CIRR, root, Split.VAL)
        scenes = json.loads(scenes_file(root, DatasetName.CIRR, Split.VAL).read_text(encoding="utf-8"))
        items = split.galleries[""]
        with torch.no_grad():
            images = torch.cat(
                [
                    clip.model.encode_image(
                        torch.stack(
                            [clip.preprocess(Image.open(i.path).convert("RGB")) for i in items[s : s + 256]]
                        )
                    )
                    for s in range(0, len(items), 256)
                ]
            )
            captions = [scenes["images"][q.target_id]["caption"] for q in split.queries]
            texts = clip.model.encode_text(clip.tokenizer(captions))
        scores = (
            torch.nn.functional.normalize(texts, dim=-1) @ torch.nn.functional.normalize(images, dim=-1).T
        )
        ids = [item.id for item in items]
        hits = {1: 0, 5: 0, 10: 0}
        for row, query in enumerate(split.queries):
            ranked = [
                ids[j] for j in scores[row].argsort(descending=True).tolist() if ids[j] != query.reference_id
            ]
            for k in hits:
                hits[k] += query.target_id in ranked[:k]
    count = len(split.queries)
    result = {f"recall_at_{k}": round(100 * n / count, 2) for k, n in hits.items()}
    result |= {"queries": count, "gallery_images": len(ids)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
