"""On-policy preference pairs: sample n responses per prompt, rank them with a judge, keep the best against the worst.

Pipeline (scripts/gen_preference_pairs.py), resumable by prompt id at every step:
    load prompts -> shard by prompt id -> generate n samples -> drop prompts whose samples are all identical
    -> judge (cached per judgment) -> pick best/worst -> [main process] merge shards -> mix originals back in -> save

Ranking rule (`pick_pair`), the one the LION script used, made explicit:
  - empty (whitespace-only) samples and samples whose judgment is unparseable take no part; both are counted;
  - chosen = the FIRST sample with the highest score, rejected = the FIRST with the lowest (argmax / argmin, first
    occurrence); prompts where several samples share the top or the bottom score are counted as ties;
  - a prompt is dropped (and counted) when all its samples are identical (before judging: no judge call is made),
    when fewer than 2 samples have a score, or when all scored samples tie (no preference to learn).

Mixing the originals back in (`mix_original_pairs`), for prompt datasets in the preference schema: among the prompts
that got a generated pair and whose prompt id occurs exactly once in the original split (prompts appearing more than
once are never mixed: which original pair would be meant?), a seeded permutation picks floor(n x p_ori_pair) prompts
whose row becomes the original pair, and the next floor(n x p_ori_chosen) whose row becomes the original chosen
against the generated worst. (The LION script took int(n x p_ori_pair) of the already-drawn p_ori_pair + p_ori_chosen
share, i.e. fewer original pairs than asked; here both are fractions of the eligible prompts.) Scores: an original
pair keeps the original's scores (None where it has none); an original-chosen row gets the judge's score of the
original chosen -- a pointwise judge scores it with the samples when p_ori_chosen > 0, so both scores share a scale --
and None with a pairwise judge (tournament wins mean nothing outside the samples). An original chosen identical to
the generated worst keeps the generated pair (counted).

Layout of the save folder (`dset_save_name`), readable as a dataset source by chatalign.data.load_source:
    <save>/train.jsonl            generated pairs (split named by output_split, default the prompt split's base)
    <save>/train_mix.jsonl        with originals mixed in (only when p_ori_pair or p_ori_chosen > 0)
    <save>/stats.yaml             counts of this and all previous runs' work (yaml: never read as data)
    <save>/.work/generations/rank-000.jsonl   samples per prompt id (one file per process; chatalign.generation rows)
    <save>/.work/judgments/rank-000.jsonl     judgment cache (judges.JudgmentCache)
    <save>/.work/ranked/<judge>/rank-000.jsonl  scores, best, worst, status per prompt id, per judge
    <save>/.work/runs/rank-000.json           what the last run of each process generated and paid for
The hidden .work folder is skipped by load_source, so `dataset_mixer: {<save>: 1.0}` reads only the pairs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chatalign import judges

logger = logging.getLogger(__name__)

OK = "ok"
DROP_IDENTICAL = "all samples identical"
DROP_TOO_FEW = "fewer than 2 judged samples"
DROP_ALL_TIED = "all judged samples tied"
GENERATED, ORIGINAL_PAIR, ORIGINAL_CHOSEN = "generated", "original_pair", "original_chosen"
_EPS = 1e-9
_PROMPTS_PER_CHUNK = 16
GENERATOR_PARAMS_CHECKED = ("n", "temperature", "top_p", "max_tokens")


@dataclass
class PairGenArguments:
    """Keys of scripts/gen_preference_pairs.py (LION's names where it had them)."""

    model_path: str | None = field(default=None, metadata={"help": "The policy to sample from (checkpoint folder)."})
    model_id: str | None = field(default=None, metadata={"help": "Name recorded in the rows (default model_path)."})
    prompt_dataset: str | None = field(
        default=None, metadata={"help": "Prompts: a preference set (originals can be mixed back in) or a prompt/sft "
                                        "set; hub id, file or folder."})
    prompt_dataset_split: str = field(default="train", metadata={"help": "Split of prompt_dataset to read."})
    prompt_dataset_format: str | None = field(default=None, metadata={"help": "Adapter name (default: detected)."})
    max_samples: int = field(default=-1, metadata={"help": "A seeded subset of this many prompts; -1: all."})
    n_to_rank: int = field(default=5, metadata={"help": "Samples per prompt."})
    gen_temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    gen_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    gen_max_tokens: int = field(default=512, metadata={"help": "New tokens per sample."})
    judge: str | None = field(
        default=None, metadata={"help": "reward_model:<path> | pairrm:<path> | llm:<local path, url, model@url or "
                                        "model> (see chatalign.judges)."})
    p_ori_pair: float = field(default=0.0, metadata={"help": "Share of eligible prompts given their original pair."})
    p_ori_chosen: float = field(
        default=0.0, metadata={"help": "Share of eligible prompts given the original chosen against the generated "
                                       "worst."})
    seed: int = field(default=42, metadata={"help": "Seeds the prompt subset, sampling and mixing."})
    dset_save_name: str | None = field(default=None, metadata={"help": "Output folder (created; reruns resume)."})
    output_split: str | None = field(
        default=None, metadata={"help": "Split name of the output file (default: the prompt split's base, train or "
                                        "test)."})
    judge_only: bool = field(default=False, metadata={"help": "Generate nothing: rank what was generated before."})
    skip_invalid: bool = field(default=True, metadata={"help": "Skip malformed prompt rows (counted)."})

    def __post_init__(self):
        missing = [k for k in ("model_path", "prompt_dataset", "judge", "dset_save_name") if not getattr(self, k)]
        if missing:
            raise ValueError(f"missing required key(s): {', '.join(missing)}")
        if self.n_to_rank < 2:
            raise ValueError(f"n_to_rank must be at least 2 (a pair needs two samples), got {self.n_to_rank}")
        for name in ("p_ori_pair", "p_ori_chosen"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.p_ori_pair + self.p_ori_chosen > 1.0 + _EPS:
            raise ValueError(f"p_ori_pair + p_ori_chosen must not exceed 1, got {self.p_ori_pair + self.p_ori_chosen}")
        if self.max_samples == 0 or self.max_samples < -1:
            raise ValueError(f"max_samples must be -1 (all) or a positive count, got {self.max_samples}")
        judges.parse_judge_spec(self.judge)
        if self.model_id is None:
            self.model_id = self.model_path
        if self.output_split is None:
            self.output_split = self.prompt_dataset_split.split("_")[0]
        if not re.fullmatch(r"(train|test)(_[A-Za-z]+)*", self.output_split):
            raise ValueError(f"output_split '{self.output_split}' must be train or test, optionally qualified "
                             "(train_gen): the dataset mixer reads splits by file name")


# --------------------------------------------------------------------------------------------------------------------
# Prompts


@dataclass
class PromptSet:
    """Prompts to generate for, in dataset order, one per prompt id; and the original pairs where the set has them."""

    items: list[dict]  # {"id", "messages"}
    originals: dict[str, dict] = field(default_factory=dict)  # prompt id -> first original preference row
    id_counts: Counter = field(default_factory=Counter)  # occurrences of each prompt id in the whole original split
    counts: dict[str, int] = field(default_factory=dict)
    schema: str = "prompt"


def prompt_id_of(messages: Sequence[dict]) -> str:
    """The id of a prompt without one: sha256 of its messages (role, content), 16 hex digits."""
    text = json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_prompts(spec: str, split: str, max_samples: int = -1, seed: int = 42, dataset_format: str | None = None,
                 skip_invalid: bool = True) -> PromptSet:
    """Prompts of one split through the dataset mixer: preference sets keep their pairs (for mixing back in), other
    sets (prompt, sft, ultrachat...) become prompt rows. Rows whose prompt does not end with a user turn are skipped
    (generation continues a user turn) and counted, as are duplicate prompt ids (generated once)."""
    from chatalign import formatting
    from chatalign.data import load_source, mix_datasets, seeded_rng

    if dataset_format:
        schema = "preference" if formatting.get_adapter(dataset_format).schema == "preference" else "prompt"
    else:
        try:
            formatting.detect_format(load_source(spec, split).column_names, "preference")
            schema = "preference"
        except ValueError:
            schema = "prompt"
    # Ask for "train" and map it onto the real split, so any split name (validation, train_prefs) can be read.
    mixed = mix_datasets({spec: {"fraction": 1.0, "split_map": {"train": split}}}, schema, splits=["train"],
                         seed=seed, skip_invalid=skip_invalid, dataset_format=dataset_format, shuffle=False)
    rows = mixed.train
    counts: dict[str, int] = {"rows": len(rows)}
    skipped = Counter()
    for source_stats in mixed.stats.rows:
        skipped.update(source_stats.skipped)
    for reason, n in sorted(skipped.items()):
        counts[f"skipped invalid rows: {reason}"] = n
    ids = [r.get("prompt_id") or prompt_id_of(r["prompt"]) for r in rows]
    id_counts = Counter(ids)
    items, originals, seen = [], {}, set()
    for row, pid in zip(rows, ids, strict=True):
        if pid in seen:
            counts["duplicate prompt ids (generated once)"] = counts.get("duplicate prompt ids (generated once)", 0) + 1
            continue
        seen.add(pid)
        if schema == "preference":
            originals[pid] = row
        if row["prompt"][-1]["role"] != "user":
            counts["prompt not ending with a user turn"] = counts.get("prompt not ending with a user turn", 0) + 1
            continue
        items.append({"id": pid, "messages": [{"role": m["role"], "content": m["content"]} for m in row["prompt"]]})
    if max_samples > 0 and max_samples < len(items):
        keep = sorted(seeded_rng(seed, "max_samples").choice(len(items), size=max_samples, replace=False))
        items = [items[i] for i in keep]
    counts["prompts"] = len(items)
    return PromptSet(items, originals, id_counts, counts, schema)


# --------------------------------------------------------------------------------------------------------------------
# Ranking


@dataclass
class Ranking:
    status: str  # OK or a drop reason
    scores: list[float | None]
    best: int | None = None
    worst: int | None = None
    tie_best: bool = False
    tie_worst: bool = False
    unparseable: int = 0
    empty: int = 0
    original_chosen_score: float | None = None


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def pick_pair(scores: Sequence[float | None]) -> Ranking:
    """Best and worst sample by the first-occurrence rule of the module docstring; None scores take no part."""
    scores = [_finite(s) for s in scores]
    judged = [(i, s) for i, s in enumerate(scores) if s is not None]
    if len(judged) < 2:
        return Ranking(DROP_TOO_FEW, scores)
    values = [s for _, s in judged]
    high, low = max(values), min(values)
    if high == low:
        return Ranking(DROP_ALL_TIED, scores)
    best = next(i for i, s in judged if s == high)
    worst = next(i for i, s in judged if s == low)
    return Ranking(OK, scores, best, worst, tie_best=values.count(high) > 1, tie_worst=values.count(low) > 1)


def rank_prompts(entries: Sequence[tuple[Sequence[dict], Sequence[str], str | None]], judge,
                 cache: judges.JudgmentCache | None, both_orders: bool = True) -> list[Ranking]:
    """A Ranking per (prompt, samples, original chosen or None); judgments of all entries go to the judge together.

    Pointwise judges (preferred where a judge is both) score each distinct sample, and the original chosen where
    given; pairwise judges play the tournament (judges.tournament_wins) and leave the original chosen unscored.
    """
    pointwise = getattr(judge, "pointwise", False)
    plans = []
    score_requests: list[tuple] = []
    compare_requests: list[tuple] = []
    for prompt, samples, original in entries:
        samples = list(samples)
        if len(set(samples)) <= 1:
            plans.append(None)
            continue
        candidates = [i for i, s in enumerate(samples) if s.strip()]
        texts = [samples[i] for i in candidates]
        if pointwise:
            wanted = list(dict.fromkeys(texts + ([original] if original else [])))
            score_requests.extend((prompt, t) for t in wanted)
        else:
            wanted = judges.tournament_pairs(texts, both_orders)
            compare_requests.extend((prompt, a, b) for a, b in wanted)
        plans.append((samples, candidates, texts, wanted))
    scored = judges.cached_scores(judge, cache, score_requests) if score_requests else []
    compared = judges.cached_comparisons(judge, cache, compare_requests) if compare_requests else []

    rankings, s_pos, c_pos = [], 0, 0
    for (_prompt, samples, original), plan in zip(entries, plans, strict=True):
        if plan is None:
            rankings.append(Ranking(DROP_IDENTICAL, [None] * len(samples)))
            continue
        samples, candidates, texts, wanted = plan
        scores: list[float | None] = [None] * len(samples)
        if pointwise:
            table = {text: j.value for text, j in zip(wanted, scored[s_pos:s_pos + len(wanted)], strict=True)}
            s_pos += len(wanted)
            for i in candidates:
                scores[i] = table[samples[i]]
            unparseable = sum(_finite(table[samples[i]]) is None for i in candidates)
            original_score = _finite(table[original]) if original else None
        else:
            table = {pair: j.value for pair, j in zip(wanted, compared[c_pos:c_pos + len(wanted)], strict=True)}
            c_pos += len(wanted)
            points, unparseable = judges.tournament_wins(texts, lambda a, b, t=table: t[(a, b)], both_orders)
            for i, p in zip(candidates, points, strict=True):
                scores[i] = p
            original_score = None
        ranking = pick_pair(scores)
        ranking.unparseable = unparseable
        ranking.empty = len(samples) - len(candidates)
        ranking.original_chosen_score = original_score
        rankings.append(ranking)
    return rankings


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
    from chatalign.generation import ResumableJsonl

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


def process_shard(args: PairGenArguments, gen_args, judge_args: judges.JudgeArguments | None, prompts: PromptSet,
                  rank: int = 0, world_size: int = 1, judge=None, progress: bool = True,
                  run_token: str | None = None) -> dict[str, int]:
    """Generate for and rank this process's prompts, skipping prompt ids already done by any process or run.

    Returns what this call generated and paid for; writes it, with `run_token`, to .work/runs/rank-NNN.json last,
    which tells the main process (wait_for_shards) that this shard is finished."""
    from chatalign import generation

    ws = Workspace(args.dset_save_name)
    mine = shard_items(prompts.items, rank, world_size)
    params = generation.SamplingParams(n=args.n_to_rank, temperature=args.gen_temperature, top_p=args.gen_top_p,
                                       max_tokens=args.gen_max_tokens, seed=args.seed)
    samples, _ = read_shards(Workspace.files(ws.generations(0).parent))
    check_generator(samples, [item["id"] for item in mine], args.model_path, params, ws.work / "generations")
    todo = [item for item in mine if item["id"] not in samples]
    generated = 0
    if todo and not args.judge_only:
        logger.info("process %d/%d: sampling %d responses for each of %d prompts (%d done before)", rank,
                    world_size, args.n_to_rank, len(todo), len(mine) - len(todo))
        for row in generation.generate(args.model_path, todo, params, gen_args, ws.generations(rank), progress):
            samples[row["id"]] = row
        generated = len(todo)

    judge = judge if judge is not None else judges.load_judge(args.judge, judge_args, gen_args)
    judge_args = judge_args or judges.JudgeArguments()
    cache = judges.JudgmentCache(ws.judgments(rank), read_also=Workspace.files(ws.judgments(0).parent))
    from chatalign.generation import ResumableJsonl

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
    path = ws.run_counts(rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"run": run_token, **counts}) + "\n")
    tmp.replace(path)  # whole or absent: the main process polls this file
    logger.info("process %d/%d: %s", rank, world_size, counts)
    return counts


# --------------------------------------------------------------------------------------------------------------------
# Merging, mixing, saving


def pair_row(item: dict, completions: Sequence[str], ranked: dict, model_id: str) -> dict:
    best, worst = ranked["best"], ranked["worst"]
    return {
        "prompt": item["messages"],
        "chosen": [{"role": "assistant", "content": completions[best]}],
        "rejected": [{"role": "assistant", "content": completions[worst]}],
        "score_chosen": float(ranked["scores"][best]),
        "score_rejected": float(ranked["scores"][worst]),
        "prompt_id": item["id"],
        "source": GENERATED,
        "generator": model_id,
        "judge": ranked["judge"],
    }


def mix_original_pairs(rows: list[dict], originals: dict[str, dict], id_counts: Counter, p_ori_pair: float,
                       p_ori_chosen: float, seed: int,
                       original_chosen_scores: dict[str, float | None] | None = None) -> tuple[list[dict], dict]:
    """Rows with originals mixed in by the rule of the module docstring; returns (rows, counts)."""
    from chatalign.data import seeded_rng

    original_chosen_scores = original_chosen_scores or {}
    eligible = [r["prompt_id"] for r in rows if r["prompt_id"] in originals and id_counts.get(r["prompt_id"]) == 1]
    n = len(eligible)
    n_pair = int(math.floor(n * p_ori_pair + _EPS))
    n_chosen = int(math.floor(n * p_ori_chosen + _EPS))
    order = seeded_rng(seed, "mix_original_pairs").permutation(n)
    pair_ids = {eligible[k] for k in order[:n_pair]}
    chosen_ids = {eligible[k] for k in order[n_pair:n_pair + n_chosen]}
    counts = Counter({"eligible (prompt id unique in the original)": n,
                      "not eligible (prompt id repeated in the original)":
                          sum(1 for r in rows if r["prompt_id"] in originals and id_counts.get(r["prompt_id"]) != 1)})
    mixed = []
    for row in rows:
        pid = row["prompt_id"]
        original = originals.get(pid)
        if pid in pair_ids:
            mixed.append({**row, "prompt": _plain(original["prompt"]), "chosen": _plain(original["chosen"]),
                          "rejected": _plain(original["rejected"]),
                          "score_chosen": _finite_or_none(original.get("score_chosen")),
                          "score_rejected": _finite_or_none(original.get("score_rejected")), "source": ORIGINAL_PAIR})
            counts[ORIGINAL_PAIR] += 1
        elif pid in chosen_ids:
            if original["chosen"][0]["content"] == row["rejected"][0]["content"]:
                counts["original chosen equals generated worst (kept generated)"] += 1
                mixed.append(row)
                counts[GENERATED] += 1
                continue
            mixed.append({**row, "chosen": _plain(original["chosen"]),
                          "score_chosen": _finite_or_none(original_chosen_scores.get(pid)), "source": ORIGINAL_CHOSEN})
            counts[ORIGINAL_CHOSEN] += 1
        else:
            mixed.append(row)
            counts[GENERATED] += 1
    return mixed, dict(counts)


def _finite_or_none(value) -> float | None:
    return None if value is None or isinstance(value, bool) else _finite(float(value))


def _plain(messages) -> list[dict]:
    # Rows read through Arrow carry every message key any row had (absent ones None); keep role and content.
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """Write atomically (a hidden temporary file renamed over the target): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


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


def run(args: PairGenArguments, gen_args, judge_args: judges.JudgeArguments | None = None, rank: int = 0,
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
    judge = judge if judge is not None else judges.load_judge(args.judge, judge_args, gen_args)
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
