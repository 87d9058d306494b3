"""Judgments, and the cache that makes sure no judgment is paid for twice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chatalign.store import ResumableJsonl, judgment_key

SCORE, COMPARE = "score", "compare"


@dataclass(frozen=True)
class Judgment:
    """A score (pointwise) or P(first response is better) (pairwise); value None = no parseable verdict."""

    value: float | None
    raw: str | None = None


class JudgmentCache:
    """Judgments keyed by judgment_key: appended to `path` as they are made, also read from `read_also` files (other
    processes' caches, earlier runs'), so a judgment already paid for anywhere under the work folder is reused.
    `paid` counts the judgments requested from a judge through this cache (cache misses)."""

    def __init__(self, path: str | Path, read_also: Sequence[str | Path] = ()):
        self.store = ResumableJsonl(path, key="key")
        self._others: dict[str, dict] = {}
        for other in read_also:
            if Path(other) != Path(path) and Path(other).is_file():
                for row in ResumableJsonl(other, key="key").rows():
                    self._others.setdefault(row["key"], row)
        self.paid = 0

    def get(self, key: str) -> Judgment | None:
        row = self.store.get(key) or self._others.get(key)
        return None if row is None else Judgment(row["value"], row.get("raw"))

    def add(self, key: str, judge: str, kind: str, judgment: Judgment) -> None:
        self.store.add({"key": key, "judge": judge, "kind": kind, "value": judgment.value, "raw": judgment.raw})

    def __len__(self) -> int:
        return len(self.store) + len(self._others)


def _cached(judge, cache: JudgmentCache | None, kind: str, requests: list[tuple]) -> list[Judgment]:
    """Judgments for `requests` ((prompt, response) or (prompt, a, b)), asking the judge only for uncached ones, in
    chunks of judge.chunk_size so an interrupted run loses at most one chunk of paid work."""
    keys = [judgment_key(judge.name, kind, r[0], *r[1:]) for r in requests]
    known: dict[str, Judgment] = {}
    missing: dict[str, tuple] = {}
    for key, request in zip(keys, requests, strict=True):
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            known[key] = hit
        elif key not in known:
            missing.setdefault(key, request)
    todo = list(missing.items())
    method = judge.score_batch if kind == SCORE else judge.compare_batch
    step = max(int(getattr(judge, "chunk_size", 8)), 1)
    for start in range(0, len(todo), step):
        chunk = todo[start:start + step]
        results = method([request for _, request in chunk])
        if cache is not None:
            cache.paid += len(chunk)
        for (key, _), judgment in zip(chunk, results, strict=True):
            if judgment is None:  # the request itself failed: not cached, retried by the next run
                judgment = Judgment(None, None)
            elif cache is not None:
                cache.add(key, judge.name, kind, judgment)
            known[key] = judgment
    return [known[key] for key in keys]


def cached_scores(judge, cache: JudgmentCache | None, requests: list[tuple[Sequence[dict], str]]) -> list[Judgment]:
    """Pointwise judgments of (prompt, response) requests through the cache."""
    return _cached(judge, cache, SCORE, requests)


def cached_comparisons(judge, cache: JudgmentCache | None,
                       requests: list[tuple[Sequence[dict], str, str]]) -> list[Judgment]:
    """P(a better than b) of (prompt, a, b) requests through the cache."""
    return _cached(judge, cache, COMPARE, requests)
