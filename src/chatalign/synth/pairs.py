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

The sharded, resumable pipeline that applies these rules is :mod:`chatalign.synth.pair_pipeline`.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from chatalign.data.mixer import mix_datasets
from chatalign.data.registry import detect_format, get_adapter
from chatalign.data.sources import load_source
from chatalign.judges.cache import JudgmentCache, cached_comparisons, cached_scores
from chatalign.judges.loading import parse_judge_spec
from chatalign.judges.tournament import tournament_pairs, tournament_wins
from chatalign.store import canonical_messages, prompt_id, seeded_rng

logger = logging.getLogger(__name__)


OK = "ok"
DROP_IDENTICAL = "all samples identical"
DROP_TOO_FEW = "fewer than 2 judged samples"
DROP_ALL_TIED = "all judged samples tied"
GENERATED, ORIGINAL_PAIR, ORIGINAL_CHOSEN = "generated", "original_pair", "original_chosen"
_EPS = 1e-9
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
        parse_judge_spec(self.judge)
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


def load_prompts(spec: str, split: str, max_samples: int = -1, seed: int = 42, dataset_format: str | None = None,
                 skip_invalid: bool = True) -> PromptSet:
    """Prompts of one split through the dataset mixer: preference sets keep their pairs (for mixing back in), other
    sets (prompt, sft, ultrachat...) become prompt rows. Rows whose prompt does not end with a user turn are skipped
    (generation continues a user turn) and counted, as are duplicate prompt ids (generated once)."""
    if dataset_format:
        schema = "preference" if get_adapter(dataset_format).schema == "preference" else "prompt"
    else:
        try:
            detect_format(load_source(spec, split).column_names, "preference")
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
    ids = [r.get("prompt_id") or prompt_id(r["prompt"]) for r in rows]
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
                 cache: JudgmentCache | None, both_orders: bool = True) -> list[Ranking]:
    """A Ranking per (prompt, samples, original chosen or None); judgments of all entries go to the judge together.

    Pointwise judges (preferred where a judge is both) score each distinct sample, and the original chosen where
    given; pairwise judges play the tournament (tournament_wins) and leave the original chosen unscored.
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
            wanted = tournament_pairs(texts, both_orders)
            compare_requests.extend((prompt, a, b) for a, b in wanted)
        plans.append((samples, candidates, texts, wanted))
    scored = cached_scores(judge, cache, score_requests) if score_requests else []
    compared = cached_comparisons(judge, cache, compare_requests) if compare_requests else []

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
            points, unparseable = tournament_wins(texts, lambda a, b, t=table: t[(a, b)], both_orders)
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
# Pair rows and the originals mixed back in


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
            mixed.append({**row, "prompt": canonical_messages(original["prompt"]), "chosen": canonical_messages(original["chosen"]),
                          "rejected": canonical_messages(original["rejected"]),
                          "score_chosen": _finite_or_none(original.get("score_chosen")),
                          "score_rejected": _finite_or_none(original.get("score_rejected")), "source": ORIGINAL_PAIR})
            counts[ORIGINAL_PAIR] += 1
        elif pid in chosen_ids:
            if original["chosen"][0]["content"] == row["rejected"][0]["content"]:
                counts["original chosen equals generated worst (kept generated)"] += 1
                mixed.append(row)
                counts[GENERATED] += 1
                continue
            mixed.append({**row, "chosen": canonical_messages(original["chosen"]),
                          "score_chosen": _finite_or_none(original_chosen_scores.get(pid)), "source": ORIGINAL_CHOSEN})
            counts[ORIGINAL_CHOSEN] += 1
        else:
            mixed.append(row)
            counts[GENERATED] += 1
    return mixed, dict(counts)


def _finite_or_none(value) -> float | None:
    return None if value is None or isinstance(value, bool) else _finite(float(value))
