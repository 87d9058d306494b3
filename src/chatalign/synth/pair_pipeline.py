"""The preference-pair pipeline (scripts/gen_preference_pairs.py): sharded over processes, resumable by prompt id.

The rules it applies (ranking, mixing originals back in) are :mod:`chatalign.synth.pairs`.

Layout of the save folder (`dset_save_name`), readable as a dataset source by chatalign.data.sources.load_source:
    <save>/train.jsonl            generated pairs (split named by output_split, default the prompt split's base)
    <save>/train_mix.jsonl        with originals mixed in (only when p_ori_pair or p_ori_chosen > 0)
    <save>/stats.yaml             counts of this and all previous runs' work (yaml: never read as data)
    <save>/.work/generations/rank-000.jsonl   samples per prompt id (one file per process; generate() rows)
    <save>/.work/judgments/rank-000.jsonl     judgment cache (chatalign.judges.cache.JudgmentCache)
    <save>/.work/ranked/<judge>/rank-000.jsonl  scores, best, worst, status per prompt id, per judge
    <save>/.work/runs/rank-000.json           what the last run of each process generated and paid for
The hidden .work folder is skipped by load_source, so `dataset_mixer: {<save>: 1.0}` reads only the pairs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from chatalign.generation.generate import generate
from chatalign.generation.params import SamplingParams
from chatalign.judges.cache import JudgmentCache
from chatalign.judges.loading import JudgeArguments, load_judge
from chatalign.store import ResumableJsonl, write_jsonl, write_text
from chatalign.synth.pairs import (
    GENERATOR_PARAMS_CHECKED,
    OK,
    PairGenArguments,
    PromptSet,
    load_prompts,
    mix_original_pairs,
    pair_row,
    rank_prompts,
)

logger = logging.getLogger(__name__)

_PROMPTS_PER_CHUNK = 16


# --------------------------------------------------------------------------------------------------------------------
# Shards and the work folder


def shard_of(prompt_id: str, world_size: int) -> int:
    """The process that owns a prompt: crc32(prompt id) mod world size, the same in every process and run."""
    return zlib.crc32(str(prompt_id).encode("utf-8")) % world_size


def shard_items(items: Sequence[dict], rank: int, world_size: int) -> list[dict]:
    return [item for item in items if shard_of(item["id"], world_size) == rank]


class Workspace:
    """Paths of a save folder (see the module docstring)."""

    def __init__(self, save_dir: str | Path):
        self.root = Path(save_dir)
        self.work = self.root / ".work"

    @staticmethod
    def _rank_file(folder: Path, rank: int, suffix: str = ".jsonl") -> Path:
        return folder / f"rank-{rank:03d}{suffix}"

    def generations(self, rank: int) -> Path:
        return self._rank_file(self.work / "generations", rank)

    def judgments(self, rank: int) -> Path:
        return self._rank_file(self.work / "judgments", rank)

    def ranked_dir(self, judge_name: str) -> Path:
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", judge_name.split("|")[0])[-48:]
        return self.work / "ranked" / f"{readable}-{hashlib.sha256(judge_name.encode()).hexdigest()[:10]}"

    def ranked(self, judge_name: str, rank: int) -> Path:
        return self._rank_file(self.ranked_dir(judge_name), rank)

    def run_counts(self, rank: int) -> Path:
        return self._rank_file(self.work / "runs", rank, ".json")

    @staticmethod
    def files(folder: Path) -> list[Path]:
        return sorted(folder.glob("rank-*.jsonl")) if folder.is_dir() else []

    def output(self, split: str) -> Path:
        return self.root / f"{split}.jsonl"


def read_shards(files: Sequence[Path], accept: Callable[[dict], bool] | None = None) -> tuple[dict[str, dict], int]:
    """(rows by id, duplicates) over per-process files: a prompt id found in several files is kept once -- the first
    row `accept`s, else the first seen -- and counted, so shards merge without duplicates whatever wrote them."""
    rows: dict[str, dict] = {}
    duplicates = 0
    for path in files:
        for row in ResumableJsonl(path).rows():
            key = str(row["id"])
            if key in rows:
                duplicates += 1
                if accept is not None and not accept(rows[key]) and accept(row):
                    rows[key] = row
            else:
                rows[key] = row
    return rows, duplicates


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def check_generator(rows: dict[str, dict], ids: Sequence[str], model: str, params, where: Path) -> None:
    """Samples already in the work folder must come from this model and these sampling settings."""
    wanted = asdict(params)
    for pid in ids:
        row = rows.get(pid)
        if row is None:
            continue
        gen = row.get("generator") or {}
        got = gen.get("params") or {}
        diff = [k for k in GENERATOR_PARAMS_CHECKED if got.get(k) != wanted[k]]
        if not _same_model(str(gen.get("model")), model) or diff:
            found = ", ".join(f"{k}={got.get(k)!r}" for k in diff) or f"model {gen.get('model')!r}"
            raise ValueError(f"{where}: prompt id {pid!r} was sampled with {found}; this run asks for model {model!r} "
                             f"with {', '.join(f'{k}={wanted[k]!r}' for k in GENERATOR_PARAMS_CHECKED)}. Use another "
                             "dset_save_name, or the same settings to resume.")


def _needs_original_score(args: PairGenArguments, prompts: PromptSet, pid: str) -> bool:
    return args.p_ori_chosen > 0 and pid in prompts.originals and prompts.id_counts[pid] == 1


def process_shard(args: PairGenArguments, gen_args, judge_args: JudgeArguments | None, prompts: PromptSet,
                  rank: int = 0, world_size: int = 1, judge=None, progress: bool = True,
                  run_token: str | None = None) -> dict[str, int]:
    """Generate for and rank this process's prompts, skipping prompt ids already done by any process or run.

    Returns what this call generated and paid for; writes it, with `run_token`, to .work/runs/rank-NNN.json last,
    which tells the main process (wait_for_shards) that this shard is finished."""
    ws = Workspace(args.dset_save_name)
    mine = shard_items(prompts.items, rank, world_size)
    params = SamplingParams(n=args.n_to_rank, temperature=args.gen_temperature, top_p=args.gen_top_p,
                                       max_tokens=args.gen_max_tokens, seed=args.seed)
    samples, _ = read_shards(Workspace.files(ws.generations(0).parent))
    check_generator(samples, [item["id"] for item in mine], args.model_path, params, ws.work / "generations")
    todo = [item for item in mine if item["id"] not in samples]
    generated = 0
    if todo and not args.judge_only:
        logger.info("process %d/%d: sampling %d responses for each of %d prompts (%d done before)", rank,
                    world_size, args.n_to_rank, len(todo), len(mine) - len(todo))
        for row in generate(args.model_path, todo, params, gen_args, ws.generations(rank), progress):
            samples[row["id"]] = row
        generated = len(todo)

    judge = judge if judge is not None else load_judge(args.judge, judge_args, gen_args)
    judge_args = judge_args or JudgeArguments()
    cache = JudgmentCache(ws.judgments(rank), read_also=Workspace.files(ws.judgments(0).parent))
    ranked_store = ResumableJsonl(ws.ranked(judge.name, rank))

    def complete(row: dict) -> bool:
        return not _needs_original_score(args, prompts, row["id"]) or "original_chosen_score" in row

    done, _ = read_shards(Workspace.files(ws.ranked_dir(judge.name)), accept=complete)
    pending = [item for item in mine if item["id"] in samples and not (item["id"] in done and complete(done[item["id"]]))]
    for start in range(0, len(pending), _PROMPTS_PER_CHUNK):
        chunk = pending[start:start + _PROMPTS_PER_CHUNK]
        entries = []
        for item in chunk:
            original = None
            if _needs_original_score(args, prompts, item["id"]):
                original = prompts.originals[item["id"]]["chosen"][0]["content"]
            entries.append((item["messages"], samples[item["id"]]["completions"], original))
        for item, ranking in zip(chunk, rank_prompts(entries, judge, cache, judge_args.judge_both_orders),
                                 strict=True):
            row = {"id": item["id"], "judge": judge.name, **asdict(ranking)}
            if not _needs_original_score(args, prompts, item["id"]):
                row.pop("original_chosen_score")
            ranked_store.add(row)
    counts = {"generated": generated, "judge_calls": cache.paid, "ranked": len(pending)}
    write_text(ws.run_counts(rank), json.dumps({"run": run_token, **counts}) + "\n")  # the main process polls it
    logger.info("process %d/%d: %s", rank, world_size, counts)
    return counts


# --------------------------------------------------------------------------------------------------------------------
# Merging and saving


def merge_and_save(args: PairGenArguments, prompts: PromptSet, judge_name: str,
                   run_token: str | None = None) -> dict[str, Any]:
    """Join every process's samples and rankings (each prompt id once), build the pairs, mix, write; return stats."""
    import yaml

    ws = Workspace(args.dset_save_name)
    samples, dup_samples = read_shards(Workspace.files(ws.generations(0).parent))

    def complete(row: dict) -> bool:
        return not _needs_original_score(args, prompts, row["id"]) or "original_chosen_score" in row

    ranked, dup_ranked = read_shards(Workspace.files(ws.ranked_dir(judge_name)), accept=complete)
    counts: Counter = Counter()
    rows, original_scores = [], {}
    for item in prompts.items:
        pid = item["id"]
        if pid not in samples:
            counts["not generated"] += 1
            continue
        result = ranked.get(pid)
        if result is None:
            counts["not judged"] += 1
            continue
        counts["unparseable judgments"] += result.get("unparseable", 0)
        counts["empty samples"] += result.get("empty", 0)
        if result["status"] != OK:
            counts[f"dropped: {result['status']}"] += 1
            continue
        counts["ties at best (first taken)"] += bool(result.get("tie_best"))
        counts["ties at worst (first taken)"] += bool(result.get("tie_worst"))
        rows.append(pair_row(item, samples[pid]["completions"], result, args.model_id))
        if "original_chosen_score" in result:
            original_scores[pid] = result["original_chosen_score"]
    counts["pairs"] = len(rows)
    stats: dict[str, Any] = {
        "prompts": dict(prompts.counts),
        "pairs": {k: v for k, v in counts.items() if v or k == "pairs"},
        "duplicates merged": {"samples": dup_samples, "rankings": dup_ranked},
        "judge": judge_name,
        "files": {args.output_split: str(ws.output(args.output_split))},
    }
    write_jsonl(ws.output(args.output_split), rows)
    if args.p_ori_pair > 0 or args.p_ori_chosen > 0:
        if prompts.schema != "preference":
            raise ValueError(f"p_ori_pair / p_ori_chosen need original pairs, but '{args.prompt_dataset}' is no "
                             "preference dataset")
        mixed, mix_counts = mix_original_pairs(rows, prompts.originals, prompts.id_counts, args.p_ori_pair,
                                               args.p_ori_chosen, args.seed, original_scores)
        split = f"{args.output_split}_mix"
        write_jsonl(ws.output(split), mixed)
        stats["mix"] = mix_counts
        stats["files"][split] = str(ws.output(split))
    runs = {}
    for path in sorted((ws.work / "runs").glob("rank-*.json")):
        record = json.loads(path.read_text())
        if run_token is None or record.get("run") == run_token:  # not a process of an earlier, wider run
            runs[path.stem] = {k: v for k, v in record.items() if k != "run"}
    stats["last run"] = runs
    (ws.root / "stats.yaml").write_text(yaml.safe_dump(stats, sort_keys=False, allow_unicode=True))
    return stats


def format_stats(stats: dict[str, Any]) -> str:
    """The counts as aligned lines for the log."""
    lines = []
    for section in ("prompts", "pairs", "mix", "duplicates merged"):
        if stats.get(section):
            lines.append(f"{section}:")
            lines.extend(f"  {k:<52} {v}" for k, v in stats[section].items())
    runs = list(stats.get("last run", {}).values())
    if runs:
        lines.append(f"this run ({len(runs)} process{'es' if len(runs) > 1 else ''}): "
                     f"{sum(r['generated'] for r in runs)} prompts sampled, "
                     f"{sum(r['judge_calls'] for r in runs)} judgments paid for")
    return "\n".join(lines)


def run(args: PairGenArguments, gen_args, judge_args: JudgeArguments | None = None, rank: int = 0,
        world_size: int = 1, barrier: Callable[[], None] = lambda: None, is_main: bool = True, judge=None,
        prompts: PromptSet | None = None, progress: bool = True, run_token: str | None = None) -> dict[str, Any] | None:
    """The whole pipeline for one process: its shard; then the main process waits (`barrier`) for the others and
    merges. Other processes return None as soon as their shard is written."""
    if prompts is None:
        prompts = load_prompts(args.prompt_dataset, args.prompt_dataset_split, args.max_samples, args.seed,
                               args.prompt_dataset_format, args.skip_invalid)
    if (args.p_ori_pair > 0 or args.p_ori_chosen > 0) and prompts.schema != "preference":
        raise ValueError(f"p_ori_pair / p_ori_chosen need original pairs, but '{args.prompt_dataset}' split "
                         f"'{args.prompt_dataset_split}' is no preference dataset")
    judge = judge if judge is not None else load_judge(args.judge, judge_args, gen_args)
    process_shard(args, gen_args, judge_args, prompts, rank, world_size, judge, progress, run_token)
    if not is_main:
        return None
    barrier()
    return merge_and_save(args, prompts, judge.name, run_token)


def wait_for_shards(save_dir: str | Path, world_size: int, run_token: str, poll_seconds: float = 2.0) -> None:
    """Block until every process has written its run file with `run_token` (a file barrier).

    A collective barrier would time out (30 minutes by default) while the slowest shard is still generating; a
    process that fails stops the launcher (torchrun, accelerate launch), which ends this wait with it."""
    import time

    ws = Workspace(save_dir)
    last_log = time.monotonic()
    while True:
        waiting = []
        for rank in range(world_size):
            try:
                record = json.loads(ws.run_counts(rank).read_text())
            except (OSError, ValueError):
                record = {}
            if record.get("run") != run_token:
                waiting.append(rank)
        if not waiting:
            return
        if time.monotonic() - last_log > 300:
            logger.info("waiting for process(es) %s to finish their shards", waiting)
            last_log = time.monotonic()
        time.sleep(poll_seconds)
