"""How often a reward model agrees with a preference set's labels (scripts/predict_preference.py).

Two kinds of scorer, both chatalign.judges objects:
  - pointwise (``reward_model``: any AutoModelForSequenceClassification, or a FunctionJudge with `score`): each reply is
    scored alone; reward_chosen and reward_rejected are the two scores.
  - pairwise (``pairrm``: llm-blender's PairRM, or a FunctionJudge with `compare`): P(chosen better) is read in both
    orders by default, p = (P(chosen over rejected | chosen shown first) + 1 - P(rejected over chosen | rejected
    first)) / 2, so position bias cancels (llm-blender's "[A,B]+[B,A]" mode, averaged as probabilities, as
    judge_dataset --eval_mode pairwise does); with both_orders off, p = P(chosen over rejected | chosen shown
    first), the one order of the PairRM model card. reward_chosen = p, reward_rejected = 1 - p.
A pair is correct only when reward_chosen > reward_rejected strictly (LION's compute_rm_reward): a tie counts as wrong.
Accuracy = correct / scored pairs, with a Wilson 95% interval; also per `source` and per bucket of the dataset's own
score difference (score_chosen - score_rejected): "<0", "[0,w)", "[w,2w)", ..., ">=top", and "no scores".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chatalign.analysis.classifier import wilson_interval
from chatalign.judges.models import PairRMJudge, RewardModelJudge
from chatalign.store import ResumableJsonl, atomic_path, pair_id, prompt_id

MODEL_TYPES = ("auto", "reward_model", "pairrm")
NO_SCORES = "no scores"
ROW_FIELDS = ("row", "pair_id", "prompt_id", "source", "reward_chosen", "reward_rejected", "margin", "correct", "tie",
              "score_chosen", "score_rejected", "score_diff", "bucket")
PAIRWISE_FIELDS = ("p_chosen_first", "p_rejected_first")


# --------------------------------------------------------------------------------------------------------------------
# Scorers


def detect_model_type(model_name_or_path: str) -> str:
    """'pairrm' when the checkpoint's config carries PairRM's keys (llm-blender/PairRM-hf), else 'reward_model'."""
    from transformers import AutoConfig

    from chatalign.judges.pairrm import CONFIG_KEYS

    try:
        config = AutoConfig.from_pretrained(model_name_or_path)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"model_name_or_path '{model_name_or_path}': no checkpoint folder or hub model with a "
                                f"config.json there ({err})") from None
    return "pairrm" if all(hasattr(config, key) for key in CONFIG_KEYS) else "reward_model"


def model_identity(model_name_or_path: str) -> str:
    """A local checkpoint by its absolute path (the same from any folder), a hub id as given."""
    path = Path(model_name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else model_name_or_path


def build_scorer(model_name_or_path: str, model_type: str, batch_size: int, max_length: int):
    """(judge, kind) for a checkpoint: RewardModelJudge or PairRMJudge (hub ids and folders); nothing loaded yet."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    kind = detect_model_type(model_name_or_path) if model_type == "auto" else model_type
    cls = PairRMJudge if kind == "pairrm" else RewardModelJudge
    judge = cls(model_name_or_path, batch_size=batch_size, max_length=max_length)
    # The resume file's identity: what changes a reward (PairRM cuts its input by its own layout, not max_length).
    judge.name = f"{kind}:{model_identity(model_name_or_path)}" + (f"|max_length:{max_length}"
                                                                   if kind == "reward_model" else "")
    return judge, kind


def load_scorer_weights(judge) -> None:
    """Load a checkpoint judge's model now, so a checkpoint whose score head did not load fails before any scoring."""
    if isinstance(judge, RewardModelJudge):
        judge.classifier.load()
    elif isinstance(judge, PairRMJudge) and judge.model is None:
        from chatalign.judges.pairrm import load_pairrm

        judge.model, judge.tokenizer = load_pairrm(judge.path)


def scorer_kind(judge, model_type: str = "auto") -> str:
    """'reward_model' (pointwise) or 'pairrm' (pairwise) for a ready judge; model_type decides for one that is both."""
    pointwise, pairwise = getattr(judge, "pointwise", False), getattr(judge, "pairwise", False)
    if (model_type == "reward_model" and not pointwise) or (model_type == "pairrm" and not pairwise):
        raise ValueError(f"model_type {model_type}: scorer {judge.name} cannot "
                         f"{'score a reply alone' if model_type == 'reward_model' else 'compare two replies'}")
    if not pointwise and not pairwise:
        raise ValueError(f"scorer {judge.name} can neither score a reply nor compare two")
    return "pairrm" if model_type == "pairrm" or not pointwise else "reward_model"


# --------------------------------------------------------------------------------------------------------------------
# Scoring, resumable


def pair_texts(row: dict) -> tuple[list[dict], str, str]:
    return row["prompt"], row["chosen"][0]["content"], row["rejected"][0]["content"]


def score_chunk(rows: Sequence[dict], judge, kind: str, both_orders: bool = True) -> list[dict | None]:
    """Rewards of each row's pair ({reward_chosen, reward_rejected} and, pairwise, the per-order P(chosen better));
    None where the scorer gave no number."""
    texts = [pair_texts(row) for row in rows]
    if kind == "reward_model":
        judged = judge.score_batch([(p, t) for p, c, r in texts for t in (c, r)])
        out = []
        for k in range(len(texts)):
            chosen, rejected = judged[2 * k], judged[2 * k + 1]
            values = [None if j is None else j.value for j in (chosen, rejected)]
            out.append(None if None in values else {"reward_chosen": float(values[0]),
                                                    "reward_rejected": float(values[1])})
        return out
    requests = [q for p, c, r in texts for q in (((p, c, r), (p, r, c)) if both_orders else ((p, c, r),))]
    judged = [None if j is None else j.value for j in judge.compare_batch(requests)]
    step = 2 if both_orders else 1
    out = []
    for k in range(len(texts)):
        first = judged[step * k]
        second = judged[step * k + 1] if both_orders else None
        if first is None or (both_orders and second is None):
            out.append(None)
            continue
        p = (first + 1.0 - second) / 2 if both_orders else float(first)
        out.append({"reward_chosen": p, "reward_rejected": 1.0 - p, "p_chosen_first": float(first),
                    "p_rejected_first": None if second is None else float(second)})
    return out


def score_pairs(rows: Sequence[dict], judge, kind: str, store: ResumableJsonl, scorer_name: str,
                both_orders: bool = True, before_scoring: Callable[[], None] | None = None) -> int:
    """Score every pair `store` (keyed by pair_id) lacks, appending each chunk's results as it finishes; returns the
    number of pairs scored now. A store holding another scorer's results is an error naming its file."""
    others = {r["scorer"] for r in store.rows() if r.get("scorer") != scorer_name}
    if others:
        raise ValueError(f"{store.path} holds rewards of {sorted(others)[0]}, not of this run's {scorer_name}: give "
                         "another output_dir, or delete the file to start over")
    todo: dict[str, dict] = {}
    for row in rows:
        pid = pair_id(*pair_texts(row))
        if pid not in store:
            todo.setdefault(pid, row)
    if todo and before_scoring is not None:
        before_scoring()
    per_row = 1 if kind == "pairrm" and not both_orders else 2
    step = max(int(getattr(judge, "chunk_size", 8)) // per_row, 1)
    items = list(todo.items())
    for start in range(0, len(items), step):
        chunk = items[start:start + step]
        for (pid, _), result in zip(chunk, score_chunk([r for _, r in chunk], judge, kind, both_orders), strict=True):
            if result is not None:  # no number: not stored, asked again by the next run
                store.add({"pair_id": pid, "scorer": scorer_name, **result})
    return len(items)


def _number(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def score_bucket(diff: float | None, width: float = 1.0, top: float = 5.0) -> str:
    """The label of a dataset score difference: "<0", "[0,1)", ..., ">=top"; NO_SCORES for None."""
    if diff is None:
        return NO_SCORES
    if diff < 0:
        return "<0"
    if diff >= top:
        return f">={top:g}"
    low = math.floor(diff / width) * width
    return f"[{low:g},{min(low + width, top):g})"


def bucket_order(width: float = 1.0, top: float = 5.0) -> list[str]:
    labels, low = ["<0"], 0.0
    while low < top:
        labels.append(score_bucket(low, width, top))
        low += width
    return [*labels, f">={top:g}", NO_SCORES]


def prediction_rows(rows: Sequence[dict], store: ResumableJsonl, kind: str, width: float = 1.0,
                    top: float = 5.0) -> list[dict]:
    """One output row per scored dataset row, in dataset order (ROW_FIELDS, plus PAIRWISE_FIELDS for pairrm)."""
    out = []
    for i, row in enumerate(rows):
        pid = pair_id(*pair_texts(row))
        scored = store.get(pid)
        if scored is None:
            continue
        sc, sr = _number(row.get("score_chosen")), _number(row.get("score_rejected"))
        diff = None if sc is None or sr is None else sc - sr
        good, bad = scored["reward_chosen"], scored["reward_rejected"]
        item = {"row": i, "pair_id": pid, "prompt_id": row.get("prompt_id") or prompt_id(row["prompt"]),
                "source": row.get("source"), "reward_chosen": good, "reward_rejected": bad, "margin": good - bad,
                "correct": good > bad, "tie": good == bad, "score_chosen": sc, "score_rejected": sr,
                "score_diff": diff, "bucket": score_bucket(diff, width, top)}
        if kind == "pairrm":
            item.update({k: scored.get(k) for k in PAIRWISE_FIELDS})
        out.append(item)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Accuracy


def group_accuracy(items: Sequence[dict]) -> dict[str, Any]:
    n, correct = len(items), sum(bool(r["correct"]) for r in items)
    return {"n": n, "correct": correct, "ties": sum(bool(r["tie"]) for r in items),
            "accuracy": correct / n if n else None, "interval": list(wilson_interval(correct, n)) if n else None}


def accuracy_summary(predictions: Sequence[dict], width: float = 1.0, top: float = 5.0) -> dict[str, Any]:
    """Overall, per-source (by name) and per-bucket (in bucket order, non-empty ones) accuracy of prediction rows."""
    sources = sorted({str(r["source"]) for r in predictions})
    buckets = [b for b in bucket_order(width, top) if any(r["bucket"] == b for r in predictions)]
    return {**group_accuracy(predictions),
            "per_source": {s: group_accuracy([r for r in predictions if str(r["source"]) == s]) for s in sources},
            "per_bucket": {b: group_accuracy([r for r in predictions if r["bucket"] == b]) for b in buckets}}


def format_accuracy_table(summary: dict[str, Any], title: str = "") -> str:
    from chatalign.eval.reporting import format_table

    def line(group: str, stats: dict) -> dict:
        low_high = stats["interval"]
        return {"group": group, "n": stats["n"], "correct": stats["correct"], "ties": stats["ties"],
                "accuracy %": None if stats["accuracy"] is None else 100 * stats["accuracy"],
                "95% interval": "-" if low_high is None else f"{100 * low_high[0]:.1f}-{100 * low_high[1]:.1f}"}

    lines = [line("overall", summary)]
    lines += [line(f"source {name}", stats) for name, stats in summary["per_source"].items()]
    lines += [line(f"score diff {name}", stats) for name, stats in summary["per_bucket"].items()]
    return format_table(lines, ["group", "n", "correct", "ties", "accuracy %", "95% interval"], title, digits=1)


def plot_accuracy(summary: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Two panels of horizontal bars, accuracy per source and per score-difference bucket, each with its 95% interval
    and its count; the dashed line is chance (50%)."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("per source", summary["per_source"]), ("per score difference (chosen - rejected)",
                                                       summary["per_bucket"])]
    heights = [max(len(groups), 1) for _, groups in panels]
    figure, axes = plt.subplots(2, 1, figsize=(8, 0.45 * sum(heights) + 3.0), gridspec_kw={"height_ratios": heights})
    for ax, (name, groups) in zip(axes, panels, strict=True):
        labels = [textwrap.shorten(str(g), 40, placeholder="...") for g in groups]
        values = [s["accuracy"] or 0.0 for s in groups.values()]
        errors = [[v - s["interval"][0] for v, s in zip(values, groups.values(), strict=True)],
                  [s["interval"][1] - v for v, s in zip(values, groups.values(), strict=True)]]
        ax.barh(range(len(labels)), values, xerr=errors if labels else None, capsize=3, color="tab:blue")
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        for k, (value, stats) in enumerate(zip(values, groups.values(), strict=True)):
            ax.text(min(stats["interval"][1] + 0.02, 1.02), k, f"{100 * value:.1f}% (n={stats['n']})",
                    va="center", fontsize="small")
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1.25)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_xlabel("accuracy (reward chosen > reward rejected)")
        ax.set_title(f"accuracy {name}", fontsize="medium")
    figure.suptitle("\n".join(textwrap.wrap(title, 90)), fontsize="medium")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return Path(path)
