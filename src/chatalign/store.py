"""What every long job shares: the resumable keyed JSONL, atomic writes, the content ids, and seeded RNGs.

Long jobs (generation, judging, pair ranking, reference log-probs, evaluation) write each finished row at once to a
:class:`ResumableJsonl` keyed by a content id, so a rerun of the same command does only what is missing. Files a
later step reads whole are written through :func:`atomic_path`: a reader sees the old file or the new one, never half.

Content ids: ONE scheme, used by self-play, preference pairs, judges, DPO's reference log-probs and evaluation alike.
An id is the sha256 (hex) of the canonical JSON (:func:`canonical_json`: sorted keys, no spaces, UTF-8) of what it
names, with every message reduced to its role and content (Arrow gives messages the union of all rows' keys):
  - :func:`prompt_id` of a prompt: a lone user message is identified by its text alone, which is how UltraChat and
    UltraFeedback compute their ``prompt_id`` (so their ids are kept, and recomputed ones agree); any other prompt by
    its messages (a system message changes the id).
  - :func:`pair_id` of a preference pair: its prompt, chosen and rejected messages.
  - :func:`judgment_key` of one judgment: the judge's name (which carries everything that changes a verdict), the
    kind of judgment and the texts judged.
Randomness is keyed the same way: :func:`seeded_rng` depends only on (seed, keys), the same on every rank and in
every process, never on a global RNG.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------------
# Content ids


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where chatalign keeps what it computed once: `cache_dir`, else $CHATALIGN_CACHE, else ~/.cache/chatalign."""
    return Path(cache_dir or os.environ.get("CHATALIGN_CACHE") or "~/.cache/chatalign").expanduser()


def canonical_json(value: Any) -> str:
    """The canonical JSON text of a value: sorted keys, no spaces, non-ASCII kept; non-JSON values as str()."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def content_hash(value: Any) -> str:
    """sha256 (hex) of the canonical JSON of `value`."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def canonical_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages reduced to role and content, the two keys that identify them."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _as_reply(value: str | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # A response given as text is the one assistant message a preference row holds.
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return canonical_messages(value)


def prompt_id(prompt: Sequence[Mapping[str, Any]]) -> str:
    """The id of a prompt: sha256 of the text of a lone user message, else of the canonical JSON of its messages."""
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return hashlib.sha256(prompt[0]["content"].encode("utf-8")).hexdigest()
    return content_hash(canonical_messages(prompt))


def pair_id(prompt: Sequence[Mapping[str, Any]], chosen, rejected) -> str:
    """The id of a preference pair; chosen and rejected are message lists or texts (one assistant message each)."""
    return content_hash({"prompt": canonical_messages(prompt), "chosen": _as_reply(chosen),
                         "rejected": _as_reply(rejected)})


def judgment_key(judge_name: str, kind: str, prompt: Sequence[Mapping[str, Any]], *responses: str) -> str:
    """The cache key of one judgment: the judge's name, the kind of judgment, the prompt and the response(s)."""
    return content_hash([judge_name, kind, canonical_messages(prompt), *responses])


# --------------------------------------------------------------------------------------------------------------------
# Seeded randomness


def _stable_int(key: Any) -> int:
    # Python's hash() of str is salted per process; ranks must agree, so hash text with crc32.
    if isinstance(key, (int, np.integer)):
        return int(key) % 2**63
    return zlib.crc32(str(key).encode("utf-8"))


def seeded_rng(seed: int, *keys: Any) -> np.random.Generator:
    """A generator that depends only on (seed, keys): the same on every rank and in every process."""
    return np.random.default_rng(np.random.SeedSequence([_stable_int(seed), *(_stable_int(k) for k in keys)]))


# --------------------------------------------------------------------------------------------------------------------
# Files


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A hidden temporary path beside `path` to write to; renamed over `path` when the block ends without an error.

    A killed or failing writer leaves the previous file (or none), never half a file a later step would read. The
    temporary name starts with a dot, so data loaders that skip hidden files never take it for data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows as JSONL, atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSONL file; a line that is not JSON is an error naming the file and line. Lines end at "\n"
    only: splitlines() would also break at U+2028 and friends, which JSON strings may hold."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number} is not valid JSON: {err.msg}") from None
    return rows


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


class ResumableJsonl:
    """A JSONL file of finished rows keyed by `key`: read on open, appended to (and flushed) as rows finish.

    An interrupted run loses at most the rows in flight; a torn last line (killed mid-write) is dropped on reading.
    """

    def __init__(self, path: str | Path, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self._rows: dict[str, dict] = {}
        if self.path.is_file():
            self._drop_torn_tail()
            with self.path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        logger.warning("%s line %d is incomplete (interrupted write): ignored", self.path, number)
                        continue
                    self._rows[str(row[key])] = row

    def _drop_torn_tail(self) -> None:
        """Cut a last line left without its newline by a killed write, so the next append starts on a fresh line."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            try:
                json.loads(data[keep:])
            except ValueError:
                logger.warning("%s: dropping an incomplete last line (interrupted write)", self.path)
                with self.path.open("r+b") as handle:
                    handle.truncate(keep)
                return
            with self.path.open("ab") as handle:  # a whole row without its newline (written by hand)
                handle.write(b"\n")

    def __contains__(self, row_id: Any) -> bool:
        return str(row_id) in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, row_id: Any) -> dict | None:
        return self._rows.get(str(row_id))

    def add(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._rows[str(row[self.key])] = row

    def rows(self) -> list[dict]:
        return list(self._rows.values())
