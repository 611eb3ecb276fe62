"""`cir demo`: the main job on one machine.

Starts the suite (Redis + four services), indexes a gallery, runs a few composed queries, prints the
rankings with their explanations and writes an HTML page that shows them.

Without a profile the demo runs on the world pack (`cir models world`, built on first use and cached):
models trained on the synthetic scene world, a heldout world gallery and queries whose targets it knows,
so the page shows whether each query found its target. With the tiny pack's profile (random weights) or a
profile of real models it indexes the sample gallery instead.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path

from cir.retriever.v1 import retriever_pb2
from cir_client.retriever import (
    connect,
    enum_label,
    format_response,
    image_files,
    image_id,
    index_folder,
    progress_bar,
    search_request,
)
from cir_tools.local_suite import STARTUP_TIMEOUT_ENV, LocalSuite, startup_timeout_s
from cir_tools.packs.tiny import PROFILE_HEADER
from cir_tools.packs.world import WORLD_PROFILE_HEADER, build_world_pack, default_pack_dir
from cir_tools.sample_gallery import write_sample_gallery

COLLECTION = "samples"
RANDOM_WEIGHTS_NOTICE = (
    "These models are the tiny pack: real architectures and formats with RANDOM weights. "
    "The rankings show the wiring of the suite, not retrieval quality."
)


@dataclass(frozen=True)
class DemoQuery:
    reference_id: str
    text: str
    strategy: str = "cvsi"
    by_image: bool = False
    # The image the query should find first, when the demo knows it (the world's queries).
    target_id: str = ""


QUERIES = (
    DemoQuery("red-circle-light", "the same shape but blue"),
    DemoQuery("green-square-dark", "on a light background instead"),
    DemoQuery("yellow-triangle-light", "a circle instead of a triangle, same colour", by_image=True),
    DemoQuery("blue-square-light", "the same but red", strategy="lincir"),
)


def run_demo(out: Path, profile: Path | None, gallery: Path | None = None, top_k: int = 5) -> Path:
    """Run the demo; `profile` None is the world pack; `gallery` None draws the gallery that fits the
    profile (the world's demo set, or the sample gallery) into `out/gallery`."""
    out.mkdir(parents=True, exist_ok=True)
    if profile is None:
        pack = default_pack_dir()
        print(
            f"no profile given: the world model pack in {pack} (trained on first use: minutes) ...",
            flush=True,
        )
        profile = build_world_pack(pack)
    header = profile.read_text(encoding="utf-8")
    random_weights = header.startswith(PROFILE_HEADER)
    queries: tuple[DemoQuery, ...] = QUERIES
    if gallery is None and header.startswith(WORLD_PROFILE_HEADER):
        from cir_tools.world.demo_set import write_demo_set

        gallery = out / "gallery"
        queries = tuple(
            DemoQuery(q.reference_id, q.text, q.strategy, target_id=q.target_id)
            for q in write_demo_set(gallery)
        )
    elif gallery is None:
        gallery = write_sample_gallery(out / "gallery")
    limit = startup_timeout_s()
    print(
        f"starting the suite with {profile} (logs in {out / 'suite'}; start-up limit {limit:g} s, "
        f"{STARTUP_TIMEOUT_ENV}) ...",
        flush=True,
    )
    suite = LocalSuite(profile=profile, workdir=out / "suite")
    started = time.perf_counter()
    # Prints which services are still starting every 15 s: model loading takes minutes on a busy machine.
    suite.start(timeout_s=limit)
    print(
        f"suite SERVING after {time.perf_counter() - started:.1f} s; retriever at {suite.retriever_address}"
    )
    try:
        stub = connect(suite.retriever_address)
        print(f"indexing {gallery} into collection {COLLECTION!r} ...", flush=True)
        summary = index_folder(stub, COLLECTION, gallery, progress_bar)
        print(f"indexed: {summary.counts}")
        for item_id, why in summary.failures:
            print(f"  failed {item_id}: {why}")
        results = []
        for query in queries:
            reference = gallery / f"{query.reference_id}.png"
            request = search_request(
                COLLECTION,
                query.text,
                image=reference if query.by_image else None,
                reference_id=None if query.by_image else query.reference_id,
                strategy=query.strategy,
                top_k=top_k,
                explain=True,
            )
            response = stub.Search(request, timeout=300)
            how = "image bytes" if query.by_image else "id in the collection"
            print(f"\nquery: {query.reference_id} ({how}) + {query.text!r}")
            print(format_response(response))
            if query.target_id:
                print(target_line(query.target_id, [hit.id for hit in response.hits]))
            results.append((query, response))
    finally:
        suite.stop()
    page = out / "demo.html"
    page.write_text(render_page(results, gallery, random_weights), encoding="utf-8")
    if random_weights:
        print(f"\n{RANDOM_WEIGHTS_NOTICE}")
    print(f"\nwrote {page}")
    return page


def target_line(target_id: str, ranked_ids: list[str]) -> str:
    """Where the query's known target landed: `target dev-1-img1: rank 1` (or not in the top k)."""
    if target_id in ranked_ids:
        return f"target {target_id}: rank {ranked_ids.index(target_id) + 1}"
    return f"target {target_id}: not in the top {len(ranked_ids)}"


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _listing(texts: list[str] | object, shown: int = 2) -> str:
    items = list(texts)  # type: ignore[call-overload]
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return "; ".join(_clip(t) for t in items[:shown]) + more


def _data_uri(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def render_page(
    results: list[tuple[DemoQuery, retriever_pb2.SearchResponse]], gallery: Path, random_weights: bool
) -> str:
    files = {image_id(gallery, p): p for p in image_files(gallery)}
    sections = []
    for query, response in results:
        explanation = response.explanation
        ranked = [h.id for h in response.hits]
        hits = "".join(
            ('<figure class="target">' if h.id == query.target_id else "<figure>")
            + f'<img src="{_data_uri(files[h.id])}" alt="{html.escape(h.id)}">'
            f"<figcaption>{rank}. {html.escape(h.id)}<br>{h.score:+.4f}</figcaption></figure>"
            for rank, h in enumerate(response.hits, start=1)
            if h.id in files
        )
        details = [
            ("strategy", enum_label(retriever_pb2.Strategy, response.resolved.strategy, "STRATEGY_")),
            ("target", target_line(query.target_id, ranked) if query.target_id else ""),
            ("captions", _listing(explanation.captions)),
            ("edited captions", _listing(explanation.edited_captions)),
            ("added objects", _clip(explanation.added_objects)),
            ("prompt", _clip(explanation.fine_grained_prompt)),
            ("degradations", "; ".join(f"{d.stage}: {d.reason}" for d in response.degradations) or "none"),
        ]
        rows = "".join(f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in details if v)
        sections.append(
            f'<section><div class="query"><figure><img src="{_data_uri(files[query.reference_id])}" '
            f'alt="reference"><figcaption>reference: {html.escape(query.reference_id)}</figcaption></figure>'
            f"<div><h2>{html.escape(query.text)}</h2><table>{rows}</table></div></div>"
            f'<div class="hits">{hits}</div></section>'
        )
    notice = f'<p class="notice">{html.escape(RANDOM_WEIGHTS_NOTICE)}</p>' if random_weights else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CIR suite demo</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
.notice {{ background: #fff3cd; border: 1px solid #e0c060; padding: .6em 1em; }}
section {{ border-top: 1px solid #ccc; padding: 1em 0; }}
.query {{ display: flex; gap: 2em; align-items: flex-start; }}
.hits {{ display: flex; gap: 1em; flex-wrap: wrap; margin-top: 1em; }}
figure {{ margin: 0; text-align: center; font-size: 12px; }}
img {{ width: 128px; height: 128px; border: 1px solid #999; image-rendering: pixelated; }}
.target img {{ border: 4px solid #2a8a2a; }}
th {{ text-align: left; padding-right: 1em; vertical-align: top; }}
</style></head><body>
<h1>Composed image retrieval: demo</h1>{notice}
{"".join(sections)}
</body></html>
"""
