"""`cir models world`: train the four model families on the synthetic scene world and write their profile.

The stages run in order (CLIP, then the mapping networks on that CLIP, the captioner, the LLM), each into
its own folder of the pack, in the on-disk formats the services load (`cir_tools.packs.world_stages`).
A stage is skipped when its folder carries a stamp with the same digest: the digest covers the source of
the world generator and of the stage's trainer, the stage's recipe, the versions of the libraries that
shape the weights, and the digests of the stages it reads. Changing any of them retrains that stage and
those after it that depend on it; an interrupted build resumes at the first unfinished stage.

`DIR/build.json` records each stage's time (and whether it came from the cache); `DIR/profile.toml`
points the services at the pack.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cir_tools.packs.tiny import PROFILE_NAME, render_toml
from cir_tools.profiles import check_profile
from cir_tools.training.progress import Progress, ProgressBar

if TYPE_CHECKING:
    from cir_tools.packs.world_stages import WorldRecipe

WORLD_PROFILE_HEADER = (
    "# World pack: CLIP, Phi, BLIP-2 and the LLM trained on the synthetic scene world (cir models world).\n"
)
BUILD_REPORT = "build.json"
# Where the demo, the tests and `cir models world` without --out keep the pack (one per machine user).
PACK_DIR_ENV = "CIR_WORLD_PACK_DIR"
STAMP = ".stage.json"
# Libraries whose version changes the trained bytes: a new one retrains rather than reusing the cache.
# The generator every stage's data comes from.
WORLD_MODULES = (
    "cir_tools.world.scene",
    "cir_tools.world.render",
    "cir_tools.world.language",
    "cir_tools.world.edits",
    "cir_tools.world.corpus",
)
_LIBRARIES = ("torch", "open_clip_torch", "transformers", "tokenizers", "pillow")


@dataclass(frozen=True)
class Stage:
    """One step of the build: what it trains, from which sources, with which recipe, after which stages."""

    name: str
    # Writes the stage's files into its folder; gets the pack root (to read earlier stages) and a progress.
    build: Callable[[Path, Path, Progress], None]
    # Python modules whose source the trained weights depend on (the world's modules are added to all).
    modules: tuple[str, ...]
    recipe: Mapping[str, Any]
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageResult:
    name: str
    seconds: float
    cached: bool


def build_world_pack(
    out_dir: Path,
    echo: Callable[[str], None] | None = print,
    progress: Callable[[str], Progress] | None = None,
    recipe: WorldRecipe | None = None,
) -> Path:
    """Build (or reuse) every stage under `out_dir` and write the profile; return the profile's path.

    `echo` gets one line per stage; `progress(stage_name)` makes the bar a stage's trainer draws
    (default: a `ProgressBar` on stderr); `recipe` None is the world pack's own (tests pass smaller ones).
    """
    from cir_tools.packs import world_stages

    build_stages(out_dir, world_stages.stages(recipe), echo, progress)
    profile_path = Path(out_dir).expanduser().resolve() / PROFILE_NAME
    profile_path.write_text(
        WORLD_PROFILE_HEADER + render_toml(world_stages.profile_tables(profile_path.parent)), encoding="utf-8"
    )
    check_profile(profile_path)  # ConfigError: a key or value some service refuses
    return profile_path


def build_stages(
    out_dir: Path,
    stages: Sequence[Stage],
    echo: Callable[[str], None] | None = print,
    progress: Callable[[str], Progress] | None = None,
) -> list[StageResult]:
    """Run each stage not already built with the same digest; write `build.json`; return what happened."""
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    say = echo or (lambda _line: None)
    make_progress = progress or (lambda name: ProgressBar(name))
    digests: dict[str, str] = {}
    results: list[StageResult] = []
    for stage in stages:
        digest = stage_digest(stage, [digests[name] for name in stage.after])
        digests[stage.name] = digest
        folder = out_dir / stage.name
        if _stamp_digest(folder) == digest:
            results.append(StageResult(stage.name, _stamp_seconds(folder), cached=True))
            say(f"{stage.name}: up to date ({folder})")
            continue
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        say(f"{stage.name}: training ...")
        started = time.perf_counter()
        stage.build(folder, out_dir, make_progress(stage.name))
        seconds = time.perf_counter() - started
        # Written last: a stage interrupted before this line is built again next time.
        (folder / STAMP).write_text(
            json.dumps({"digest": digest, "seconds": seconds}) + "\n", encoding="utf-8"
        )
        results.append(StageResult(stage.name, seconds, cached=False))
        say(f"{stage.name}: done in {seconds:.1f} s")
    report = {r.name: {"seconds": round(r.seconds, 3), "cached": r.cached} for r in results}
    (out_dir / BUILD_REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return results


def default_pack_dir() -> Path:
    """$CIR_WORLD_PACK_DIR, else `world-pack` under the user's cache folder ($XDG_CACHE_HOME or ~/.cache)."""
    import os

    if os.environ.get(PACK_DIR_ENV):
        return Path(os.environ[PACK_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cir" / "world-pack"


def build_report(out_dir: Path) -> dict[str, dict[str, Any]]:
    """`build.json` of a built pack: {stage: {"seconds": s, "cached": bool}}."""
    return json.loads((Path(out_dir) / BUILD_REPORT).read_text(encoding="utf-8"))


def stage_digest(stage: Stage, upstream: list[str]) -> str:
    """The hash that decides whether a stage's folder can be reused (see the module docstring)."""
    digest = hashlib.sha256()
    payload = {
        "stage": stage.name,
        "recipe": _plain(stage.recipe),
        "upstream": upstream,
        "libraries": {name: _version(name) for name in _LIBRARIES},
    }
    digest.update(json.dumps(payload, sort_keys=True).encode())
    for module in (*WORLD_MODULES, *stage.modules):
        digest.update(module.encode())
        digest.update(_module_source(module))
    return digest.hexdigest()


def _module_source(module: str) -> bytes:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None:
        raise RuntimeError(f"the world pack's digest needs the source of {module}, which is not installed")
    if spec.origin is not None and Path(spec.origin).name != "__init__.py":
        return Path(spec.origin).read_bytes()
    # A folder of data files (the prompt templates): its files' contents, in name order.
    folders = [Path(p) for p in (spec.submodule_search_locations or ())]
    files = sorted(
        p for folder in folders for p in folder.iterdir() if p.is_file() and p.suffix in {".py", ".toml"}
    )
    return b"".join(p.name.encode() + p.read_bytes() for p in files)


def _plain(value: Any) -> Any:
    """A recipe as JSON-able data (dataclasses, enums and paths included), for the digest."""
    import dataclasses
    import enum

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def _stamp(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _stamp_digest(folder: Path) -> str | None:
    return _stamp(folder).get("digest")


def _stamp_seconds(folder: Path) -> float:
    return float(_stamp(folder).get("seconds", 0.0))
