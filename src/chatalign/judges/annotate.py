"""Re-annotating a preference set with a judge (scripts/judge_dataset.py), and how often it keeps the labels."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from chatalign.judges.cache import JudgmentCache, cached_comparisons, cached_scores
from chatalign.judges.rubrics import DEFAULT_RUBRIC, RubricJudge, get_rubric, is_llm_judge, parse_rubric_ratings
from chatalign.store import pair_id, seeded_rng

# single:   each response rated alone. An LLM judge rates it with an UltraFeedback rubric (judges.rubrics, 1 to 5);
#           a pointwise judge (reward model, FunctionJudge score) gives its score instead of the rating.
# all:      both responses rated in ONE prompt by an LLM judge with the same rubric ("<text 1> ... <text 2>"), in a
#           seeded random order per pair (chosen_shown_first: the seed and the pair id, not the row's position).
# pairwise: the judge compares the pair twice, chosen shown first (as A) and rejected shown first; with
#           p = mean(P(chosen over rejected | chosen first), 1 - P(rejected over chosen | rejected first)): agree if
#           p > 0.5, disagree if < 0.5, tie if 0.5 (a judge that always picks the first reply lands here: its position
#           bias cancels). Rows whose two orders name different winners are counted as position-inconsistent.
# single / all: agree if rating(chosen) > rating(rejected), disagree if <, tie if equal (not an agreement);
#           unparseable if either rating is missing ("N/A", no "Rating:", out of 1..5, a failed request).
# agreement_rate = agree / (agree + disagree + tie), over the parseable rows; agreement_without_ties =
# agree / (agree + disagree); agreement_over_all_rows = agree / rows.

AGREE, DISAGREE, TIE, UNPARSEABLE = "agree", "disagree", "tie", "unparseable"
VERDICTS = (AGREE, DISAGREE, TIE, UNPARSEABLE)
EVAL_MODES = ("single", "all", "pairwise")
_ORDER_NAMES = {1.0: "A", 0.0: "B", 0.5: "C"}


def _verdict(p: float | None) -> str:
    if p is None:
        return UNPARSEABLE
    return AGREE if p > 0.5 else DISAGREE if p < 0.5 else TIE


def _rated(chosen: float | None, rejected: float | None) -> str:
    if chosen is None or rejected is None:
        return UNPARSEABLE
    return AGREE if chosen > rejected else DISAGREE if chosen < rejected else TIE


def check_judge(judge, mode: str) -> None:
    """Raise (before any judgment) unless `judge` can annotate in `mode`."""
    if mode not in EVAL_MODES:
        raise ValueError(f"eval_mode must be one of {', '.join(EVAL_MODES)}, got {mode!r}")
    if mode == "single" and not (is_llm_judge(judge) or getattr(judge, "pointwise", False)):
        raise ValueError(f"eval_mode single needs an LLM judge or one that scores one response ({judge.name} "
                         "compares pairs: use eval_mode pairwise)")
    if mode == "all" and not is_llm_judge(judge):
        raise ValueError(f"eval_mode all rates both responses in one rubric prompt, so it needs an LLM judge (a model "
                         f"name, model@url, url or local checkpoint folder); {judge.name} is not one: use eval_mode "
                         "single for a reward model, pairwise for a pair classifier")
    if mode == "pairwise" and not getattr(judge, "pairwise", False):
        raise ValueError(f"eval_mode pairwise needs a judge that compares two responses ({judge.name} scores one)")


def mode_judge(judge, mode: str, rubric: str = DEFAULT_RUBRIC):
    """The judge actually asked: an LLM judge wrapped with the rubric in single and all modes, else `judge`."""
    check_judge(judge, mode)
    return RubricJudge(judge, get_rubric(rubric)) if mode != "pairwise" and is_llm_judge(judge) else judge


def annotator_name(judge, mode: str, rubric: str = DEFAULT_RUBRIC, seed: int = 42) -> str:
    """What a verdict depends on besides the pair: the judge, its rubric and (mode all) the order seed."""
    name = mode_judge(judge, mode, rubric).name
    return f"{name}|seed:{seed}" if mode == "all" else name


def chosen_shown_first(pid: str, seed: int) -> bool:
    """Mode all: is chosen shown as text 1? From (seed, pair id) alone, so stable across resumes and row orders."""
    return bool(seeded_rng(seed, "chosen_first", pid).random() < 0.5)


def annotate_pairs(rows: Sequence[dict], judge, cache: JudgmentCache | None, mode: str,
                   rubric: str = DEFAULT_RUBRIC, seed: int = 42) -> list[dict]:
    """A verdict dict per preference row (prompt, chosen, rejected as message lists), by `mode` (see above).
    With an LLM judge, a verdict one of whose requests failed outright also has request_failed=True: it is not
    worth keeping (the judgment was not cached either), a rerun asks again."""
    asked = mode_judge(judge, mode, rubric)
    texts = [(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows]
    out = _annotate(asked, cache, mode, texts, seed)
    if is_llm_judge(judge):  # an LLM answer is never None; a None raw is a request that failed (not cached)
        for verdict in out:
            if any(v is None for k, v in verdict.items() if k.startswith("judge_output")):
                verdict["request_failed"] = True
    return out


def _annotate(asked, cache: JudgmentCache | None, mode: str, texts: list[tuple], seed: int) -> list[dict]:
    out = []
    if mode == "single":
        judged = cached_scores(asked, cache, [(p, t) for p, c, r in texts for t in (c, r)])
        for k in range(len(texts)):
            jc, jr = judged[2 * k], judged[2 * k + 1]
            out.append({"verdict": _rated(jc.value, jr.value), "rating_chosen": jc.value, "rating_rejected": jr.value,
                        "judge_output_chosen": jc.raw, "judge_output_rejected": jr.raw})
        return out
    if mode == "all":
        first = [chosen_shown_first(pair_id(p, c, r), seed) for p, c, r in texts]
        judged = cached_comparisons(asked, cache, [(p, c, r) if f else (p, r, c)
                                                   for (p, c, r), f in zip(texts, first, strict=True)])
        for f, j in zip(first, judged, strict=True):
            one, two = parse_rubric_ratings(j.raw, 2, asked.rubric.scale)
            rc, rr = (one, two) if f else (two, one)
            out.append({"verdict": _rated(rc, rr), "rating_chosen": rc, "rating_rejected": rr, "chosen_first": f,
                        "judge_output": j.raw})
        return out
    judged = cached_comparisons(asked, cache, [q for p, c, r in texts for q in ((p, c, r), (p, r, c))])
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


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def agreement_summary(verdicts: Sequence[dict]) -> dict[str, Any]:
    counts = Counter(v["verdict"] for v in verdicts)
    parseable = counts[AGREE] + counts[DISAGREE] + counts[TIE]
    summary: dict[str, Any] = {"rows": len(verdicts), **{v: counts[v] for v in VERDICTS},
                               "agreement_rate": _share(counts[AGREE], parseable),
                               "agreement_without_ties": _share(counts[AGREE], counts[AGREE] + counts[DISAGREE]),
                               "agreement_over_all_rows": _share(counts[AGREE], len(verdicts))}
    if any("position_consistent" in v for v in verdicts):
        summary["position_inconsistent"] = sum(1 for v in verdicts if v.get("position_consistent") is False)
    if any("chosen_first" in v for v in verdicts):
        summary["chosen_first"] = sum(1 for v in verdicts if v.get("chosen_first"))
        for shown, flag in (("first", True), ("second", False)):
            part = [v["verdict"] for v in verdicts if bool(v.get("chosen_first")) is flag and v["verdict"] != UNPARSEABLE]
            summary[f"agreement_rate_chosen_{shown}"] = _share(part.count(AGREE), len(part))
    return summary


def _rate_line(label: str, part: int, whole: int) -> str:
    rate = f"{100 * part / whole:5.1f}%" if whole else "     -"
    return f"  {label:<52}{rate}  ({part} of {whole})"


def format_agreement_table(summary: dict[str, Any], title: str = "") -> str:
    rows = summary["rows"]
    lines = [title] if title else []
    lines.append(f"{'verdict':<14}{'rows':>7}{'share':>9}")
    for verdict in VERDICTS:
        share = f"{100 * summary[verdict] / rows:.1f}%" if rows else "-"
        lines.append(f"{verdict:<14}{summary[verdict]:>7}{share:>9}")
    lines.append(f"{'total':<14}{rows:>7}")
    agree, decided = summary[AGREE], summary[AGREE] + summary[DISAGREE]
    lines += ["agreement with the original labels (agree: the chosen response judged better):",
              _rate_line("agree / parseable rows (a tie is not an agreement)", agree, decided + summary[TIE]),
              _rate_line("agree / (agree + disagree) (ties left out)", agree, decided),
              _rate_line("agree / all rows (unparseable ones too)", agree, rows)]
    if "position_inconsistent" in summary:
        lines.append(f"position-inconsistent (the two orders named different winners): "
                     f"{summary['position_inconsistent']}")
    if "chosen_first" in summary:
        first, second = (summary[f"agreement_rate_chosen_{k}"] for k in ("first", "second"))
        pct = [f"{100 * r:.1f}%" if r is not None else "-" for r in (first, second)]
        lines.append(f"chosen shown as text 1 in {summary['chosen_first']} of {rows} rows; agree / parseable: "
                     f"{pct[0]} when shown first, {pct[1]} when shown second")
    return "\n".join(lines)
