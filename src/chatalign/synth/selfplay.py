"""Self-play data (SPIN-style iterative training): prompts with their real answers, the model's own answers to them,
and the training sets built from the two.

Three steps, one script each, all resumable and safe to rerun:

1. reformat (scripts/reformat.py): an SFT source -> single-turn prompts with their ground-truth answers,
   ``{prompt_id, prompt: [messages], real: str}`` in ``<dir>/train.parquet`` and ``<dir>/test.parquet``.
   Each conversation gives its *first exchange*, as SPIN's reformat does: the messages up to and including the first
   user turn (a leading system message stays) are the prompt, the assistant reply after it is the real answer.
   Later turns are dropped, not turned into prompts of their own: a later user turn answers the real first reply,
   which the model being trained never wrote, so it is no prompt the model's own conversation would reach.
   A prompt_id is the source's own (UltraChat's) or a stable hash of the prompt (:func:`chatalign.store.prompt_id`);
   prompts are deduplicated on it, so it names one prompt within the pipeline.
2. generate (scripts/generate.py): the prompts shuffled with a fixed seed and cut into fractions of ``frac_len``
   rows; fraction K is generated (by :func:`chatalign.generation.generate.generate`, rendered with the model's chat
   template) into ``<dir>/<split>_frac<K>.jsonl``, one row per prompt keyed by prompt_id. Fractions can run on
   different machines; :func:`merge_fractions` joins the files of a split without duplicates and fails when two disagree.
3. convert (scripts/convert_data.py): the merged rows -> parquet training sets (:func:`convert_rows`): ``kto`` (the
   unpaired rows nnPU-KTO pairs per prompt_id), ``dpo`` and ``spin`` (preference pairs, real = chosen).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from chatalign.data.normalize import normalize_dataset
from chatalign.data.registry import detect_format
from chatalign.data.schemas import schema_features
from chatalign.data.sources import MissingSplitError, load_source
from chatalign.store import ResumableJsonl, atomic_path, prompt_id, write_jsonl

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
FORMATS = ("kto", "dpo", "spin")
# A source whose rows the `math_code` adapter would split at every ```output block: in self-play the model writes the
# whole trajectory (code and outputs) in one go, so the whole trajectory is the real answer (the "messages" adapter).
_WHOLE_TRAJECTORY_ADAPTERS = {"math_code": "messages"}


# --------------------------------------------------------------------------------------------------------------------
# 1. Reformat: conversations -> (prompt, real)


def first_exchange(messages: list[dict]) -> tuple[list[dict], str]:
    """(prompt, real): the messages up to the first user turn, and the assistant reply that follows it."""
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    if first_user is None or first_user + 1 >= len(messages) or messages[first_user + 1]["role"] != "assistant":
        raise ValueError("conversation has no user turn followed by an assistant reply")
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[: first_user + 1]]
    return prompt, messages[first_user + 1]["content"]


def reformat_adapter(columns: list[str], requested: str | None) -> str:
    """The adapter that reads the source as sft rows: the requested one, else the detected one (see
    _WHOLE_TRAJECTORY_ADAPTERS for the one detected adapter that is swapped)."""
    if requested not in (None, "auto"):
        return requested
    detected = detect_format(columns, "sft")
    swapped = _WHOLE_TRAJECTORY_ADAPTERS.get(detected)
    if swapped:
        logger.info("format '%s' detected: reading whole trajectories with '%s' (the real answer is the whole "
                    "assistant turn, tool outputs included)", detected, swapped)
        return swapped
    return detected


def conversations_to_prompts(sft_rows: Iterable[Mapping], counts: Counter | None = None) -> list[dict]:
    """Canonical sft rows -> ``{prompt_id, prompt, real}`` rows, first exchange only, deduplicated by prompt_id
    (the first row of a prompt wins; later ones are counted as "duplicate prompt")."""
    counts = counts if counts is not None else Counter()
    rows, seen = [], set()
    for row in sft_rows:
        prompt, real = first_exchange(row["messages"])
        pid = row.get("prompt_id") or prompt_id(prompt)
        if pid in seen:
            counts["duplicate prompt"] += 1
            continue
        seen.add(pid)
        rows.append({"prompt_id": pid, "prompt": prompt, "real": real})
        if len(row["messages"]) > len(prompt) + 1:
            counts["later turns dropped"] += 1
    return rows


def carve_test(rows: list[dict], test_size: float | int, seed: int, source: str) -> tuple[list[dict], list[dict]]:
    """(train, test): a seeded set of test rows (a fraction if < 1, else a count), both kept in source order."""
    import numpy as np

    n_test = math.ceil(test_size * len(rows) - 1e-9) if test_size < 1 else int(test_size)
    if not 0 < n_test < len(rows):
        raise ValueError(f"dataset '{source}': test_size {test_size} gives {n_test} test rows of {len(rows)}; "
                         "it must leave rows in both splits")
    test_rows = set(np.random.default_rng(seed).permutation(len(rows))[:n_test].tolist())
    return ([r for i, r in enumerate(rows) if i not in test_rows], [r for i, r in enumerate(rows) if i in test_rows])


def reformat_source(data: str, train_split: str = "train", test_split: str = "test", test_size: float | int = 0.1,
                    seed: int = 42, max_samples: int | None = None, adapter: str | None = None,
                    skip_invalid: bool = False) -> tuple[dict[str, list[dict]], dict[str, Counter]]:
    """Load an SFT source (hub id, file or folder, through chatalign.data.sources.load_source), and return its train
    and test prompt rows plus counts per split. A source without `test_split` gets one carved off its train rows
    (test_size, seeded); test prompts that are also train prompts are dropped from the test split."""

    def load(split: str, counts: Counter) -> list[dict]:
        raw = load_source(data, split)
        name = reformat_adapter(list(raw.column_names), adapter)
        normalised, skipped = normalize_dataset(raw, data, "sft", adapter=name, skip_invalid=skip_invalid)
        counts["source rows"] = len(raw)
        counts.update({f"skipped: {reason}": n for reason, n in skipped.items()})
        return conversations_to_prompts(normalised, counts)

    counts = {split: Counter() for split in SPLITS}
    train = load(train_split, counts["train"])
    try:
        test = load(test_split, counts["test"])
    except MissingSplitError:
        logger.info("dataset '%s' has no split '%s': carving %s of its train prompts off as the test split", data,
                    test_split, test_size)
        train, test = carve_test(train, test_size, seed, data)
        counts["test"]["carved from train"] = counts["train"]["carved to test"] = len(test)
    train_ids = {r["prompt_id"] for r in train}
    overlap = [r for r in test if r["prompt_id"] in train_ids]
    if overlap:
        counts["test"]["dropped: also a train prompt"] = len(overlap)
        test = [r for r in test if r["prompt_id"] not in train_ids]
    splits = {"train": train, "test": test}
    if max_samples is not None:
        splits = {split: rows[:max_samples] for split, rows in splits.items()}
    for split, rows in splits.items():
        counts[split]["prompts"] = len(rows)
    return splits, counts


def write_rows(rows: list[dict], path: str | Path) -> Path:
    """Write prompt rows as parquet (or JSONL when the path ends in .jsonl), replacing the file whole."""
    from datasets import Dataset, Features, List, Value

    path = Path(path)
    if path.suffix == ".jsonl":
        return write_jsonl(path, rows)
    message_list = List({"role": Value("string"), "content": Value("string")})
    features = Features({"prompt_id": Value("string"), "prompt": message_list, "real": Value("string")})
    with atomic_path(path) as tmp:  # a killed run must not leave half a file the next step would read
        Dataset.from_list(rows, features=features).to_parquet(str(tmp))
    return path


# --------------------------------------------------------------------------------------------------------------------
# 2. Generate: fractions of the shuffled prompts, merged without duplicates


def load_prompts(input_dir: str | Path, split: str) -> list[dict]:
    """The `split` prompt rows reformat wrote to `input_dir`, in file order."""
    dataset = load_source(str(input_dir), split)
    missing = [c for c in ("prompt_id", "prompt", "real") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset '{input_dir}' split '{split}': missing column(s) {missing} (columns: "
                         f"{', '.join(dataset.column_names)}); write it with scripts/reformat.py")
    return [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "real": r["real"]} for r in dataset]


def fraction_items(prompts: list[dict], data_frac: int, frac_len: int, shuffle_seed: int) -> list[dict]:
    """Generation items of fraction `data_frac`: rows [frac_len*K, frac_len*(K+1)) of the prompts shuffled with
    `shuffle_seed` (frac_len 0: all of them, as fraction 0). Each item carries its place in the shuffle, so merged
    fractions can be put back in one order and checked against each other.

    The shuffle sorts prompts by sha256(seed, prompt_id): machines with other library versions, or a prompt file in
    another row order, still cut the same fractions.
    """
    if frac_len < 0 or data_frac < 0:
        raise ValueError(f"frac_len and data_frac must be >= 0, got frac_len={frac_len}, data_frac={data_frac}")
    if frac_len == 0 and data_frac != 0:
        raise ValueError(f"frac_len 0 means all prompts in one fraction, so data_frac must be 0, got {data_frac}")
    order = sorted(range(len(prompts)), key=lambda i: hashlib.sha256(
        f"{shuffle_seed}\0{prompts[i]['prompt_id']}".encode("utf-8")).hexdigest())
    start, stop = (0, len(order)) if frac_len == 0 else (frac_len * data_frac, frac_len * (data_frac + 1))
    if start >= len(order):
        fractions = math.ceil(len(order) / frac_len)
        raise ValueError(f"data_frac {data_frac} is past the end: {len(order)} prompts make {fractions} fraction(s) "
                         f"of {frac_len} (data_frac 0..{fractions - 1})")
    items = []
    for position in range(start, min(stop, len(order))):
        row = prompts[order[position]]
        items.append({"id": row["prompt_id"], "messages": row["prompt"], "real": row["real"],
                      "shuffle": {"seed": shuffle_seed, "index": position, "of": len(order)}})
    return items


def fraction_file(output_dir: str | Path, split: str, data_frac: int) -> Path:
    return Path(output_dir) / f"{split}_frac{data_frac}.jsonl"


def fraction_files(input_dir: str | Path, split: str) -> list[Path]:
    """The fraction files of `split` in `input_dir`, by fraction number."""
    pattern = re.compile(rf"^{re.escape(split)}_frac(\d+)\.jsonl$")
    found = [(int(m.group(1)), p) for p in Path(input_dir).glob(f"{split}_frac*.jsonl")
             if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


def merge_fractions(input_dir: str | Path, split: str) -> list[dict]:
    """All generated rows of `split`, one per prompt_id, in shuffle order.

    A prompt in two files must have the same row in both (same prompt, real answer, completions, generator and place
    in the shuffle): anything else means the files come from different runs (another model, other sampling settings,
    another shuffle) and is an error naming both files. Fractions of different shuffles are an error too.
    """
    files = fraction_files(input_dir, split)
    if not files:
        raise FileNotFoundError(f"no generated '{split}' fractions ({split}_frac<K>.jsonl) in '{input_dir}'; run "
                                "scripts/generate.py first")
    merged: dict[str, tuple[dict, Path]] = {}
    for path in files:
        for row in ResumableJsonl(path).rows():
            key = str(row["id"])
            if key not in merged:
                merged[key] = (row, path)
                continue
            first, first_path = merged[key]
            if first != row:
                fields = sorted(k for k in set(first) | set(row) if first.get(k) != row.get(k))
                raise ValueError(f"prompt_id {key}: '{first_path}' and '{path}' disagree on {', '.join(fields)}; "
                                 "they come from different generation runs, so keep only one run's files")
    rows = [row for row, _ in merged.values()]
    shuffles = {(r["shuffle"]["seed"], r["shuffle"]["of"]) for r in rows}
    if len(shuffles) > 1:
        raise ValueError(f"'{input_dir}' split '{split}': fraction files come from different shuffles "
                         f"(seed, prompts) {sorted(shuffles)}; fractions only merge within one shuffle")
    rows.sort(key=lambda r: r["shuffle"]["index"])
    total = rows[0]["shuffle"]["of"]
    logger.info("'%s' split '%s': %d generated prompts of %d, from %d fraction file(s)", input_dir, split, len(rows),
                total, len(files))
    return rows


# --------------------------------------------------------------------------------------------------------------------
# 3. Convert: generated rows -> training sets


def convert_rows(rows: list[dict], fmt: str) -> tuple[list[dict], Counter]:
    """Training rows of format `fmt` from merged generation rows, and the counts of what was built and dropped.

    One pair per completion (n completions of a prompt give n pairs, each with the real answer):
      - kto:  unpaired rows {prompt, completion, label, prompt_id}: the real answer with label True (positive), the
              generation with label False (unlabelled), real first. nnPU-KTO (run_kto, kto_variant nnpu) pairs them
              again per prompt_id. A generation equal to the real answer is kept: PU learning expects unlabelled
              rows that are in fact positive.
      - dpo:  preference rows {prompt, chosen, rejected, prompt_id}: chosen = real, rejected = generated.
      - spin: the dpo rows plus SPIN's own columns, "real" and "generated" as whole conversations (prompt + reply), so
              the file also feeds SPIN's original trainer. The pairs are the same; SPIN is DPO's loss with the
              previous iteration as reference, which run_dpo gives when model and reference are that checkpoint.
              In both preference formats a generation equal to the real answer is dropped (no preference to learn).
    Empty generations are dropped in every format (no assistant message may be empty).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}' (expected one of {', '.join(FORMATS)})")
    out, counts = [], Counter()
    for row in rows:
        prompt, real = row["messages"], row["real"]
        for generated in row["completions"]:
            if not generated.strip():
                counts["dropped: empty generation"] += 1
                continue
            if fmt != "kto" and generated == real:
                counts["dropped: generation equals real"] += 1
                continue
            counts["pairs"] += 1
            real_msg, generated_msg = [{"role": "assistant", "content": real}], [{"role": "assistant",
                                                                                   "content": generated}]
            if fmt == "kto":
                out.append({"prompt": prompt, "completion": real_msg, "label": True, "prompt_id": row["id"]})
                out.append({"prompt": prompt, "completion": generated_msg, "label": False, "prompt_id": row["id"]})
                continue
            pair = {"prompt": prompt, "chosen": real_msg, "rejected": generated_msg, "prompt_id": row["id"]}
            if fmt == "spin":
                pair.update(real=prompt + real_msg, generated=prompt + generated_msg)
            out.append(pair)
    return out, counts


def training_features(fmt: str):
    """Parquet features of a converted training set: the canonical schema with prompt_id (+ SPIN's columns)."""
    from datasets import List, Value

    if fmt == "kto":
        return schema_features("unpaired", ["prompt_id"])
    features = schema_features("preference", ["prompt_id"])
    if fmt == "spin":
        message_list = List({"role": Value("string"), "content": Value("string")})
        features["real"] = message_list
        features["generated"] = message_list
    return features


def write_training_set(rows: list[dict], fmt: str, path: str | Path) -> Path:
    from datasets import Dataset

    with atomic_path(path) as tmp:
        Dataset.from_list(rows, features=training_features(fmt)).to_parquet(str(tmp))
    return Path(path)


def summary(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"
