"""Re-annotating a preference set with a judge (scripts/judge_dataset.py), and how often it keeps the labels."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from chatalign.judges.cache import JudgmentCache, cached_comparisons, cached_scores

# single: the judge scores chosen and rejected alone; agree if score(chosen) > score(rejected), disagree if <, tie if
#         equal, unparseable if either has no score.
# all:    the judge compares the pair twice, chosen shown first (as A) and rejected shown first; with
#         p = mean(P(chosen over rejected | chosen first), 1 - P(rejected over chosen | rejected first)): agree if
#         p > 0.5, disagree if < 0.5, tie if 0.5 (a judge that always picks the first reply lands here: its position
#         bias cancels); unparseable if either order has no verdict. Rows whose two orders name different winners
#         are also counted as position-inconsistent.
# agreement rate = agree / (agree + disagree + tie): the share of parseable rows where the judge keeps the label.

AGREE, DISAGREE, TIE, UNPARSEABLE = "agree", "disagree", "tie", "unparseable"
VERDICTS = (AGREE, DISAGREE, TIE, UNPARSEABLE)
EVAL_MODES = ("single", "all")
_ORDER_NAMES = {1.0: "A", 0.0: "B", 0.5: "C"}


def _verdict(p: float | None) -> str:
    if p is None:
        return UNPARSEABLE
    return AGREE if p > 0.5 else DISAGREE if p < 0.5 else TIE


def annotate_pairs(rows: Sequence[dict], judge, cache: JudgmentCache | None, mode: str) -> list[dict]:
    """A verdict dict per preference row (prompt, chosen, rejected as message lists), by `mode` (see above)."""
    if mode not in EVAL_MODES:
        raise ValueError(f"eval_mode must be one of {', '.join(EVAL_MODES)}, got {mode!r}")
    texts = [(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows]
    out = []
    if mode == "single":
        if not getattr(judge, "pointwise", False):
            raise ValueError(f"eval_mode single needs a judge that scores one response ({judge.name} compares pairs)")
        judged = cached_scores(judge, cache, [(p, t) for p, c, r in texts for t in (c, r)])
        for k in range(len(texts)):
            jc, jr = judged[2 * k], judged[2 * k + 1]
            sc, sr = jc.value, jr.value
            p_chosen = None if sc is None or sr is None else 1.0 if sc > sr else 0.0 if sc < sr else 0.5
            out.append({"verdict": _verdict(p_chosen), "new_score_chosen": sc, "new_score_rejected": sr,
                        "judge_output_chosen": jc.raw, "judge_output_rejected": jr.raw})
        return out
    if not getattr(judge, "pairwise", False):
        raise ValueError(f"eval_mode all needs a judge that compares two responses ({judge.name} scores one)")
    judged = cached_comparisons(judge, cache, [q for p, c, r in texts for q in ((p, c, r), (p, r, c))])
    for k in range(len(texts)):
        first, second = judged[2 * k], judged[2 * k + 1]
        p_chosen = None
        if first.value is not None and second.value is not None:
            p_chosen = (first.value + 1.0 - second.value) / 2
        consistent = None
        if p_chosen is not None:
            # Winner named by each order: chosen shown first -> A means chosen; rejected shown first -> B means chosen.
            consistent = _verdict(first.value) == _verdict(1.0 - second.value)
        out.append({"verdict": _verdict(p_chosen), "p_chosen": p_chosen,
                    "verdict_chosen_first": _ORDER_NAMES.get(first.value) if first.value is not None else None,
                    "verdict_rejected_first": _ORDER_NAMES.get(second.value) if second.value is not None else None,
                    "position_consistent": consistent,
                    "judge_output_chosen_first": first.raw, "judge_output_rejected_first": second.raw})
    return out


def agreement_summary(verdicts: Sequence[dict]) -> dict[str, Any]:
    counts = Counter(v["verdict"] for v in verdicts)
    parseable = counts[AGREE] + counts[DISAGREE] + counts[TIE]
    summary: dict[str, Any] = {"rows": len(verdicts), **{v: counts[v] for v in VERDICTS},
                               "agreement_rate": counts[AGREE] / parseable if parseable else None,
                               "agreement_over_all_rows": counts[AGREE] / len(verdicts) if verdicts else None}
    inconsistent = sum(1 for v in verdicts if v.get("position_consistent") is False)
    if any("position_consistent" in v for v in verdicts):
        summary["position_inconsistent"] = inconsistent
    return summary


def format_agreement_table(summary: dict[str, Any], title: str = "") -> str:
    rows = summary["rows"]
    lines = [title] if title else []
    lines.append(f"{'verdict':<14}{'rows':>7}{'share':>9}")
    for verdict in VERDICTS:
        share = f"{100 * summary[verdict] / rows:.1f}%" if rows else "-"
        lines.append(f"{verdict:<14}{summary[verdict]:>7}{share:>9}")
    lines.append(f"{'total':<14}{rows:>7}")
    parseable = rows - summary[UNPARSEABLE]
    if summary["agreement_rate"] is None:
        lines.append("agreement with the original labels: - (no parseable verdict)")
    else:
        lines.append(f"agreement with the original labels: {100 * summary['agreement_rate']:.1f}% of {parseable} "
                     f"parseable rows ({100 * summary['agreement_over_all_rows']:.1f}% of all {rows})")
    if "position_inconsistent" in summary:
        lines.append(f"position-inconsistent (the two orders named different winners): "
                     f"{summary['position_inconsistent']}")
    return "\n".join(lines)
