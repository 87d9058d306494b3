"""MT-Bench as FastChat 0.2.36 defines it: its data and file layouts, its judge prompts and verdict parsing, and the
scores of its ``show_result.py``.

FastChat itself cannot run a judge any more (0.2.36, its latest release, pins ``openai<1`` and fails with
``APIRemovedInV1`` on a current client), so chatalign keeps FastChat's data, prompts and formats and only replaces the
call. Layout of a bench folder (FastChat's ``data/mt_bench/``):

    question.jsonl                      {question_id, category, turns: [q1, q2]}
    reference_answer/<judge>.jsonl      answers the math/reasoning/coding judges compare against
    model_answer/<model>.jsonl          {question_id, answer_id, model_id, choices: [{index, turns: [a1, a2]}], tstamp}
    model_judgment/<judge>_single.jsonl {question_id, model, judge: [judge, prompt name], user_prompt, judgment, score,
                                         turn, tstamp}
    model_judgment/<judge>_pair.jsonl   {question_id, model_1, model_2, g1_winner, g2_winner, judge, ..., turn}

Scores (single mode), exactly as ``show_result.py``: rows with score -1 are dropped; turn 1 and turn 2 are the means
of their rows; the average is the mean of all remaining rows of both turns, not the mean of the two turn means.
Duplicated rows count as often as they occur, unless ``dedup`` keeps the last row of each (model, question, turn).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from chatalign.store import read_jsonl

# The shipped data: <checkout>/data/mt_bench in a checkout, a copy inside the package in a regular install (setup.py).
_PACKAGED = Path(__file__).resolve().parent / "mt_bench_data"
MT_BENCH_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[3] / "data" / "mt_bench"

CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")  # judged against a reference answer
# FastChat's answer-generation temperature per category (gen_model_answer.py); others get 0.7.
TEMPERATURE_CONFIG = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                      "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
DEFAULT_TEMPERATURE = 0.7
TIE_DELTA = 0.1  # two-score pairwise verdicts closer than this are a tie
# The four judges of each mode: (prompt name, uses the reference answer, judges turn 2).
SINGLE_JUDGES = {"default": ("single-v1", False, False), "math": ("single-math-v1", True, False),
                 "default-mt": ("single-v1-multi-turn", False, True),
                 "math-mt": ("single-math-v1-multi-turn", True, True)}
PAIR_JUDGES = {"default": ("pair-v2", False, False), "math": ("pair-math-v1", True, False),
               "default-mt": ("pair-v2-multi-turn", False, True), "math-mt": ("pair-math-v1-multi-turn", True, True)}

_ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
_TWO_SCORES = re.compile(r"\[\[(\d+\.?\d*),\s?(\d+\.?\d*)\]\]")
_TWO_SCORES_BACKUP = re.compile(r"\[(\d+\.?\d*),\s?(\d+\.?\d*)\]")


# --------------------------------------------------------------------------------------------------------------------
# Data


def load_questions(path: str | Path = MT_BENCH_DIR / "question.jsonl") -> list[dict]:
    questions = read_jsonl(path)
    for number, question in enumerate(questions, 1):
        missing = [k for k in ("question_id", "category", "turns") if k not in question]
        if missing:
            raise ValueError(f"{path} line {number}: missing field(s) {', '.join(missing)}")
    return questions


def load_judge_prompts(path: str | Path = MT_BENCH_DIR / "judge_prompts.jsonl") -> dict[str, dict]:
    return {row["name"]: row for row in read_jsonl(path)}


def load_answers(path: str | Path) -> dict[str, dict[Any, dict]]:
    """{model: {question_id: answer}} from a model_answer folder (one <model>.jsonl each) or a single file."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    return {file.stem: {row["question_id"]: row for row in read_jsonl(file)} for file in files}


def check_answers(questions: list[dict], answers: Mapping[str, Mapping[Any, dict]], where: str,
                  multi_turn: bool = True) -> None:
    """Every model has an answer to every question, with a turn per question turn; the error names the first gap."""
    for model, by_id in answers.items():
        for question in questions:
            answer = by_id.get(question["question_id"])
            if answer is None:
                raise ValueError(f"{where}: model '{model}' has no answer to question {question['question_id']}")
            turns = answer["choices"][0]["turns"]
            needed = len(question["turns"]) if multi_turn else 1
            if len(turns) < needed:
                raise ValueError(f"{where}: model '{model}', question {question['question_id']}: {len(turns)} "
                                 f"answer turn(s), the question has {needed}")


# --------------------------------------------------------------------------------------------------------------------
# Judge prompts and verdicts (FastChat's common.py run_judge_single / run_judge_pair)


def single_prompt(template: Mapping[str, Any], question: dict, answer: dict, reference: dict | None = None,
                  multi_turn: bool = False) -> list[dict]:
    """The judge's messages for one answer: FastChat's system prompt and its user prompt, filled in."""
    kwargs = _reference_kwargs(reference, multi_turn)
    turns = answer["choices"][0]["turns"]
    if multi_turn:
        user = template["prompt_template"].format(question_1=question["turns"][0], question_2=question["turns"][1],
                                                  answer_1=turns[0], answer_2=turns[1], **kwargs)
    else:
        user = template["prompt_template"].format(question=question["turns"][0], answer=turns[0], **kwargs)
    return [{"role": "system", "content": template["system_prompt"]}, {"role": "user", "content": user}]


def pair_prompt(template: Mapping[str, Any], question: dict, answer_a: dict, answer_b: dict,
                reference: dict | None = None, multi_turn: bool = False) -> list[dict]:
    """The judge's messages for one game (A shown first)."""
    kwargs = _reference_kwargs(reference, multi_turn)
    a, b = answer_a["choices"][0]["turns"], answer_b["choices"][0]["turns"]
    if multi_turn:
        user = template["prompt_template"].format(question_1=question["turns"][0], question_2=question["turns"][1],
                                                  answer_a_1=a[0], answer_b_1=b[0], answer_a_2=a[1],
                                                  answer_b_2=b[1], **kwargs)
    else:
        user = template["prompt_template"].format(question=question["turns"][0], answer_a=a[0], answer_b=b[0],
                                                  **kwargs)
    return [{"role": "system", "content": template["system_prompt"]}, {"role": "user", "content": user}]


def _reference_kwargs(reference: dict | None, multi_turn: bool) -> dict[str, str]:
    if reference is None:
        return {}
    turns = reference["choices"][0]["turns"]
    return {"ref_answer_1": turns[0], **({"ref_answer_2": turns[1]} if multi_turn else {})}


def parse_single_rating(judgment: str | None) -> float:
    """FastChat's rating: the first [[x]], else the first [x], else -1 (unparseable)."""
    if not judgment:
        return -1
    match = _ONE_SCORE.search(judgment) or _ONE_SCORE_BACKUP.search(judgment)
    return ast.literal_eval(match.groups()[0]) if match else -1


def parse_pair_winner(judgment: str | None, output_format: str = "[[A]]") -> str:
    """FastChat's game verdict: 'A', 'B', 'tie' or 'error'."""
    judgment = judgment or ""
    if output_format == "[[A]]":
        for mark, winner in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
            if mark in judgment:
                return winner
        return "error"
    if output_format == "[[rating_a,rating_b]]":
        match = _TWO_SCORES.search(judgment) or _TWO_SCORES_BACKUP.search(judgment)
        if not match:
            return "error"
        a, b = (ast.literal_eval(s.strip()) for s in match.groups())
        return "tie" if abs(a - b) <= TIE_DELTA else "A" if a > b else "B"
    raise ValueError(f"unknown judge output format {output_format!r}")


def single_matches(questions: list[dict], models: Iterable[str], answers: Mapping[str, Mapping[Any, dict]],
                   prompts: Mapping[str, dict], references: Mapping[Any, dict] | None) -> list[dict]:
    """Every (question, model, turn) single-answer judgment FastChat's gen_judgment.py makes, in its order: turn 1
    without, then with reference, then turn 2 likewise. Each: {question, model, turn, judge_prompt, messages}."""
    matches = []
    for name, multi_turn, question, reference in _judged_questions(SINGLE_JUDGES, questions, references):
        for model in models:
            messages = single_prompt(prompts[name], question, answers[model][question["question_id"]], reference,
                                     multi_turn)
            matches.append({"question": question, "model": model, "turn": 2 if multi_turn else 1,
                            "judge_prompt": name, "messages": messages})
    return matches


def _judged_questions(judges: Mapping[str, tuple], questions: list[dict], references: Mapping[Any, dict] | None):
    """(judge prompt, multi_turn, question, reference or None) in gen_judgment.py's order: turn 1 without, then with
    reference, then turn 2 likewise; a reference-guided prompt only for NEED_REF_CATS, turn 2 only for 2-turn
    questions."""
    for key in ("default", "math", "default-mt", "math-mt"):
        name, with_reference, multi_turn = judges[key]
        for question in questions:
            if (question["category"] in NEED_REF_CATS) != with_reference:
                continue
            if multi_turn and len(question["turns"]) != 2:
                continue
            yield name, multi_turn, question, _reference_for(question, references) if with_reference else None


def pair_matches(questions: list[dict], model: str, baseline: str, answers: Mapping[str, Mapping[Any, dict]],
                 prompts: Mapping[str, dict], references: Mapping[Any, dict] | None) -> list[dict]:
    """Every game pair of FastChat's pairwise-baseline mode, in its order (model_1 the model, model_2 the baseline),
    each with the judge's messages for both orders: g1 shows model_1 as A, g2 shows model_2 as A."""
    matches = []
    for name, multi_turn, question, reference in _judged_questions(PAIR_JUDGES, questions, references):
        first, second = answers[model][question["question_id"]], answers[baseline][question["question_id"]]
        matches.append({"question": question, "model_1": model, "model_2": baseline,
                        "turn": 2 if multi_turn else 1, "judge_prompt": name,
                        "g1_messages": pair_prompt(prompts[name], question, first, second, reference, multi_turn),
                        "g2_messages": pair_prompt(prompts[name], question, second, first, reference, multi_turn)})
    return matches


def pair_winners(g1_judgment: str | None, g2_judgment: str | None, output_format: str = "[[A]]") -> tuple[str, str]:
    """FastChat's (g1_winner, g2_winner): each game's A/B mapped back to model_1/model_2 (tie and error kept)."""
    g1 = parse_pair_winner(g1_judgment, output_format)
    g2 = parse_pair_winner(g2_judgment, output_format)
    return ({"A": "model_1", "B": "model_2"}.get(g1, g1), {"A": "model_2", "B": "model_1"}.get(g2, g2))


def _reference_for(question: dict, references: Mapping[Any, dict] | None) -> dict:
    if references is None or question["question_id"] not in references:
        raise ValueError(f"question {question['question_id']} ({question['category']}) is judged against a reference "
                         "answer, and the reference file has none for it (--reference_answer_file)")
    return references[question["question_id"]]


# --------------------------------------------------------------------------------------------------------------------
# Scores (FastChat's show_result.py)


def load_judgments(path: str | Path) -> tuple[list[dict], str]:
    """The rows of a judgment file and the one judge model that made them (a file mixing judges is an error: a
    result is never made of two judges' verdicts)."""
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path}: no judgments")
    judges = {tuple(r["judge"])[0] if isinstance(r.get("judge"), (list, tuple)) else r.get("judge") for r in rows}
    if len(judges) > 1:
        raise ValueError(f"{path}: rows judged by {', '.join(sorted(map(str, judges)))}; a result never mixes judges")
    served = {r["judge_model_id"] for r in rows if r.get("judge_model_id")}
    if len(served) > 1:  # one name, two models behind it (an alias that moved): as much a mix as two names
        raise ValueError(f"{path}: judge {next(iter(judges))} answered as {', '.join(sorted(served))}; a result "
                         "never mixes judges")
    return rows, judges.pop()


def single_scores(rows: Iterable[Mapping[str, Any]], questions: list[dict] | None = None,
                  dedup: bool = False) -> dict[str, dict[str, Any]]:
    """Per model: turn_1, turn_2 and average as FastChat's show_result computes them, the number of rows counted and
    of unparseable (-1) rows dropped, and with `questions` the mean per category (both turns)."""
    rows = list(rows)
    if dedup:  # the last row of each (model, question, turn) wins, as a rerun's append would intend
        rows = list({(r["model"], r["question_id"], r["turn"]): r for r in rows}.values())
    category = {q["question_id"]: q["category"] for q in questions or []}
    out: dict[str, dict[str, Any]] = {}
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        kept = [r for r in mine if r["score"] != -1]
        result: dict[str, Any] = {"turn_1": _mean([r["score"] for r in kept if r["turn"] == 1]),
                                  "turn_2": _mean([r["score"] for r in kept if r["turn"] == 2]),
                                  "average": _mean([r["score"] for r in kept]),
                                  "rows": len(kept), "unparseable": len(mine) - len(kept)}
        if category:
            by_category = {c: _mean([r["score"] for r in kept if category.get(r["question_id"]) == c])
                           for c in CATEGORIES}
            result["categories"] = by_category
        out[model] = result
    return out


def overall_of_categories(categories: Mapping[str, float | None]) -> float | None:
    """LION's overall: the mean of the 8 category means (missing if any category has no score)."""
    values = [categories.get(c) for c in CATEGORIES]
    return None if any(v is None for v in values) else sum(values) / len(values)


def pair_results(rows: Iterable[Mapping[str, Any]], baseline: str | None = None) -> dict[str, dict[str, Any]]:
    """FastChat's pairwise table: a game pair whose two orders disagree, or that ties, is a tie for both models; rows
    with an error in either order are dropped; with `baseline`, only games against it count and it is left out."""
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        if "error" in (row["g1_winner"], row["g2_winner"]):
            continue
        if baseline is not None and baseline not in (row["model_1"], row["model_2"]):
            continue
        if row["g1_winner"] == "tie" or row["g1_winner"] != row["g2_winner"]:
            results = [(row["model_1"], "tie"), (row["model_2"], "tie")]
        else:
            winner, loser = (("model_1", "model_2") if row["g1_winner"] == "model_1" else ("model_2", "model_1"))
            results = [(row[winner], "win"), (row[loser], "loss")]
        for model, outcome in results:
            counts.setdefault(model, {"win": 0, "loss": 0, "tie": 0})[outcome] += 1
    out = {}
    for model, c in counts.items():
        if model == baseline:
            continue
        total = c["win"] + c["loss"] + c["tie"]
        out[model] = {**c, "win_rate": c["win"] / total, "loss_rate": c["loss"] / total,
                      "win_rate_adjusted": (c["win"] + 0.5 * c["tie"]) / total}
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
