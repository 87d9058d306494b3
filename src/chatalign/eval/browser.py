"""What the results browser (scripts/browse_results.py, the counterpart of FastChat's qa_browser) shows: every
question of a benchmark, each model's answers, each judge's reasoning and score, and a pairwise panel of two models.
Plain functions over the files the run_* scripts write, so the page itself is a thin gradio layer.

Sources: MT-Bench bench folders (model_answer/, model_judgment/<judge>_single.jsonl and _pair.jsonl), Arena-Hard
bench folders (<bench>/model_answer/, model_judgment/<judge>/), AlpacaEval results folders
(<model>/<annotator>/annotations.json).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatalign.eval import arena_hard, mt_bench
from chatalign.store import content_hash, read_jsonl


class ResultsIndex:
    """The questions, answers and judgments of the benchmarks found in the given folders, by benchmark name."""

    def __init__(self, mt_bench_dirs: Sequence[str | Path] = (), arena_hard_dirs: Sequence[str | Path] = (),
                 alpaca_eval_dirs: Sequence[str | Path] = ()):
        self.benches: dict[str, dict[str, Any]] = {}
        for folder in map(Path, mt_bench_dirs):
            self._add_mt_bench(folder)
        for folder in map(Path, arena_hard_dirs):
            self._add_arena_hard(folder)
        for folder in map(Path, alpaca_eval_dirs):
            self._add_alpaca_eval(folder)
        if not self.benches:
            raise ValueError("no results found: give MT-Bench, Arena-Hard or AlpacaEval results folders")

    # -- loading ----------------------------------------------------------------------------------------------

    def _bench(self, name: str) -> dict[str, Any]:
        return self.benches.setdefault(name, {"questions": {}, "answers": {}, "judgments": {}, "pairs": {}})

    def _add_mt_bench(self, folder: Path) -> None:
        bench = self._bench("mt_bench")
        for q in mt_bench.load_questions(mt_bench.MT_BENCH_DIR / "question.jsonl"):
            bench["questions"][str(q["question_id"])] = {"category": q["category"], "turns": q["turns"]}
        for path in sorted((folder / "model_answer").glob("*.jsonl")):
            for model, answers in mt_bench.load_answers(path).items():
                for qid, row in answers.items():
                    bench["answers"].setdefault(str(qid), {})[model] = row["choices"][0]["turns"]
        for path in sorted((folder / "model_judgment").glob("*_single.jsonl")):
            for row in read_jsonl(path):
                judge = row["judge"][0] if isinstance(row["judge"], list) else row["judge"]
                bench["judgments"].setdefault(judge, {}).setdefault(str(row["question_id"]), []).append(
                    {"model": row["model"], "turn": row["turn"], "score": row["score"], "text": row["judgment"]})
        for path in sorted((folder / "model_judgment").glob("*_pair.jsonl")):
            for row in read_jsonl(path):
                judge = row["judge"][0] if isinstance(row["judge"], list) else row["judge"]
                bench["pairs"].setdefault(judge, {}).setdefault(str(row["question_id"]), []).append(row)

    def _add_arena_hard(self, folder: Path) -> None:
        for bench_name in arena_hard.BENCHES:
            root = folder / bench_name if (folder / bench_name).is_dir() else None
            if root is None:
                continue
            bench = self._bench(bench_name)
            for q in arena_hard.load_questions(bench_name):
                bench["questions"][str(q["id"])] = {"category": q["category"], "turns": [q["prompt"]]}
            for path in [*(arena_hard.bench_dir(bench_name) / "model_answer").glob("*.jsonl"),
                         *(root / "model_answer").glob("*.jsonl")]:
                model, rows = arena_hard.load_answers(path)
                for qid, row in rows.items():
                    bench["answers"].setdefault(str(qid), {})[model] = [arena_hard.answer_text(row)]
            for judge_dir in sorted(p for p in (root / "model_judgment").glob("*") if p.is_dir()):
                for path in sorted(judge_dir.glob("*.jsonl")):
                    for row in read_jsonl(path):
                        qid = str(row.get("uid", row.get("question_id")))
                        bench["pairs"].setdefault(judge_dir.name, {}).setdefault(qid, []).append(row)

    def _add_alpaca_eval(self, folder: Path) -> None:
        bench = self._bench("alpaca_eval")
        for path in sorted(folder.glob("*/*/annotations.json")):
            for row in json.loads(path.read_text(encoding="utf-8")):
                qid = content_hash(row["instruction"])[:12]
                bench["questions"].setdefault(qid, {"category": row.get("dataset", ""), "turns": [row["instruction"]]})
                answers = bench["answers"].setdefault(qid, {})
                answers[row["generator_1"]] = [row["output_1"]]
                answers[row["generator_2"]] = [row["output_2"]]
                bench["pairs"].setdefault(row.get("annotator", path.parent.name), {}).setdefault(qid, []).append(row)

    # -- what the page asks --------------------------------------------------------------------------------------

    def benchmarks(self) -> list[str]:
        return sorted(self.benches)

    def judges(self, bench: str) -> list[str]:
        b = self.benches[bench]
        return sorted(set(b["judgments"]) | set(b["pairs"]))

    def questions(self, bench: str) -> list[tuple[str, str]]:
        """(label, id) of every question with an answer, labels as "<id> [<category>] <start of the question>"."""
        b = self.benches[bench]
        out = []
        for qid, q in b["questions"].items():
            if qid in b["answers"]:
                text = q["turns"][0].replace("\n", " ")
                out.append((f"{qid} [{q['category']}] {text[:60]}", qid))
        return out

    def models(self, bench: str) -> list[str]:
        return sorted({m for answers in self.benches[bench]["answers"].values() for m in answers})

    def view(self, bench: str, judge: str | None, qid: str) -> dict[str, Any]:
        """The question, each model's answer turns, and the judge's judgments of them (single scores or games)."""
        b = self.benches[bench]
        return {"bench": bench, "judge": judge, "id": qid, "question": b["questions"][qid],
                "answers": b["answers"].get(qid, {}), "judgments": b["judgments"].get(judge, {}).get(qid, []),
                "games": b["pairs"].get(judge, {}).get(qid, [])}

    def pair_view(self, bench: str, judge: str | None, qid: str, model_a: str, model_b: str) -> dict[str, Any]:
        """Two models side by side: their answers, their single scores, and the games between them."""
        view = self.view(bench, judge, qid)
        scores = {m: [(j["turn"], j["score"]) for j in view["judgments"] if j["model"] == m] for m in (model_a, model_b)}
        games = [g for g in view["games"] if _players(g) & {model_a, model_b}]
        return {**view, "models": [model_a, model_b], "scores": scores, "games": games}


def render_view(view: dict[str, Any]) -> str:
    """The single-answer panel as Markdown."""
    q = view["question"]
    lines = [f"## {view['bench']} question {view['id']} ({q['category']})"]
    for i, turn in enumerate(q["turns"], 1):
        lines += [f"**User (turn {i}):**", "", turn, ""]
    for model, turns in sorted(view["answers"].items()):
        lines.append(f"### {model}")
        for i, text in enumerate(turns, 1):
            lines += [f"**Answer (turn {i}):**", "", text, ""]
        for j in sorted((j for j in view["judgments"] if j["model"] == model), key=lambda j: j["turn"]):
            lines += [f"**Judge {view['judge']}, turn {j['turn']}: score {j['score']}**", "", f"> {_quote(j['text'])}", ""]
    for game in view["games"]:
        lines += _render_game(game)
    return "\n".join(lines)


def render_pair(view: dict[str, Any]) -> str:
    """The pairwise panel as Markdown: both models' answers and scores, then the games between them."""
    a, b = view["models"]
    lines = [f"## {a} vs {b}, question {view['id']}", "", "| | " + a + " | " + b + " |", "|---|---|---|"]
    for turn in sorted({t for s in view["scores"].values() for t, _ in s}):
        cells = [next((str(s) for t, s in view["scores"][m] if t == turn), "-") for m in (a, b)]
        lines.append(f"| score, turn {turn} | {cells[0]} | {cells[1]} |")
    for model in (a, b):
        lines.append(f"### {model}")
        for i, text in enumerate(view["answers"].get(model, []), 1):
            lines += [f"**Answer (turn {i}):**", "", text, ""]
    for game in view["games"]:
        lines += _render_game(game)
    return "\n".join(lines)


def _players(game: dict[str, Any]) -> set[str]:
    """The models a judged game compares (MT-Bench pairs, Arena-Hard's model and baseline, AlpacaEval's two)."""
    names = {game.get(k) for k in ("model_1", "model_2", "model", "baseline", "generator_1", "generator_2")}
    return {n for n in names if n}


def _render_game(game: dict[str, Any]) -> list[str]:
    if "g1_judgment" in game:  # MT-Bench pairwise
        return [f"**Games {game['model_1']} vs {game['model_2']}, turn {game['turn']}: {game['g1_winner']} / "
                f"{game['g2_winner']}**", "", f"> {_quote(game['g1_judgment'])}", "", f"> {_quote(game['g2_judgment'])}", ""]
    if "games" in game:  # Arena-Hard
        out = [f"**Games of {game['model']} vs its baseline: {' / '.join(str(g.get('score')) for g in game['games'])}**"]
        for g in game["games"]:
            text = g.get("judgment")
            out += ["", f"> {_quote(text['answer'] if isinstance(text, dict) else text)}"]
        return [*out, ""]
    return [f"**{game.get('annotator', 'annotator')}: preference {game.get('preference')} "
            f"({game['generator_2']} over {game['generator_1']} when 2)**", ""]


def _quote(text: str | None) -> str:
    return (text or "").strip().replace("\n", "\n> ")
