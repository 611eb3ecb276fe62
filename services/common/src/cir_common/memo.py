"""Read-through caching of per-item results: look every item up, compute only the misses, store them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cir_common.cache import Cache


@dataclass(frozen=True)
class Memoized:
    values: list[bytes]
    hits: list[bool]


async def get_or_compute(
    cache: Cache,
    keys: Sequence[str],
    compute_missing: Callable[[list[int]], Awaitable[Sequence[bytes]]],
    *,
    bypass: bool = False,
) -> Memoized:
    """Values for every key; `compute_missing(indices)` is called once, with the indices of the misses.

    Duplicate keys in one call are computed once. With `bypass` the cache is neither read nor written.
    What was computed is stored without waiting for the shared store (`Cache.set_many(wait=False)`).
    """
    found: list[bytes | None] = [None] * len(keys) if bypass else await cache.get_many(list(keys))
    first_index: dict[str, int] = {}
    missing: list[int] = []
    for index, (key, value) in enumerate(zip(keys, found, strict=True)):
        if value is None and key not in first_index:
            first_index[key] = index
            missing.append(index)
    computed: dict[str, bytes] = {}
    if missing:
        results = await compute_missing(missing)
        computed = {keys[i]: value for i, value in zip(missing, results, strict=True)}
        if not bypass:
            # Write-behind: the caller has its values now; the shared cache gets them a moment later
            # (this process at once), so no request waits for a Redis round trip to store what it computed.
            await cache.set_many(computed, wait=False)
    values = [found[i] if found[i] is not None else computed[key] for i, key in enumerate(keys)]
    hits = [value is not None for value in found]
    return Memoized(values=values, hits=hits)  # type: ignore[arg-type]
