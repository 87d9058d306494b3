"""Running Arena-Hard-Auto: a model's answers through the generation layer and the two games per question through
the eval judge, written as upstream writes them (v0.1: the legacy layout; v2.0: the current one), resumable.

Layout, as upstream's data/: ``<bench_dir>/<bench>/model_answer/<model_id>.jsonl`` and
``<bench_dir>/<bench>/model_judgment/<judge>/<model_id>.jsonl`` (``<bench_dir>/run<k>/`` with several runs).
Baselines' answers are read from ``<bench>/model_answer/`` there when present, else from the shipped data.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chatalign.eval import arena_hard as ah
from chatalign.eval.judge import EvalJudge, JudgeCall, judgment_provenance
from chatalign.generation.generate import generate
from chatalign.generation.params import GenerationArguments, SamplingParams
from chatalign.store import content_hash, write_jsonl


@dataclass
class ArenaHardArguments:
    """Keys of scripts/run_arena_hard.py."""

    model_path: str | None = field(default=None, metadata={"help": "The checkpoint to evaluate (folder or hub id)."})
    model_id: str | None = field(default=None, metadata={"help": "Its name in the files (default: the folder name)."})
    bench: Literal["arena-hard-v0.1", "arena-hard-v2.0"] = field(default=ah.V01, metadata={"help": "Which Arena-Hard."})
    bench_dir: str = field(default="outputs/arena_hard", metadata={"help": "Folder of <bench>/model_answer/ and "
                                                                          "model_judgment/."})
    categories: list[str] | None = field(
        default=None, metadata={"help": "v2.0: hard_prompt (against o3-mini) and/or creative_writing (against "
                                        "gemini-2.0-flash-001, whose answers are not shipped); default hard_prompt."})
    first_n: int | None = field(default=None, metadata={"help": "Only the first n questions (a quick run)."})
    num_runs: int = field(default=1, metadata={"help": "Generate and judge this many times (run<k>/ folders)."})
    judge_only: bool = field(default=False, metadata={"help": "Judge the answers already in bench_dir."})
    gen_temperature: float = field(default=0.0, metadata={"help": "Answer temperature (upstream: 0)."})
    gen_max_tokens: int = field(default=4096, metadata={"help": "New tokens per answer (upstream: 4096)."})
    seed: int = field(default=42, metadata={"help": "Sampling seed of run 1 (run k: seed + k - 1) and the bootstrap."})
    style_control: list[str] | None = field(default=None, metadata={"help": "v2.0: also the score controlled for "
                                                                            "'length' and/or 'markdown'."})

    def __post_init__(self):
        if not self.model_path and not (self.judge_only and self.model_id):
            raise ValueError("give model_path (or, with judge_only, the model_id whose answers to judge)")
        if self.num_runs < 1:
            raise ValueError(f"num_runs must be at least 1, got {self.num_runs}")
        if self.bench == ah.V01 and (self.categories or self.style_control):
            raise ValueError("categories and style_control are arena-hard-v2.0 options")
        self.categories = self.categories or (["hard_prompt"] if self.bench == ah.V2 else [ah.V01])
        self.model_id = self.model_id or Path(str(self.model_path).rstrip("/")).name


def run_folder(args: ArenaHardArguments, run: int) -> Path:
    folder = Path(args.bench_dir) if args.num_runs == 1 else Path(args.bench_dir) / f"run{run + 1}"
    return folder / args.bench


def select_questions(args: ArenaHardArguments, settings: dict) -> list[dict]:
    """The bench's questions of the chosen categories (v2.0 labels coding and math 'hard_prompt')."""
    questions = ah.load_questions(args.bench)
    known = set(settings["categories"])
    for category in args.categories:
        if category not in known:
            raise ValueError(f"{args.bench}: unknown category {category!r} (known: {', '.join(sorted(known))})")
    questions = [q for q in questions if q["category"] in args.categories]
    return questions[: args.first_n] if args.first_n else questions


def baseline_answers(args: ArenaHardArguments, settings: dict, questions: Sequence[dict]) -> dict[str, dict]:
    """{category: {question id: baseline answer text}}, every question covered, checked before any work."""
    out = {}
    for category in args.categories:  # every category asked for, even one that first_n leaves no question of
        baseline = settings["categories"][category]["baseline"]
        local = Path(args.bench_dir) / args.bench / "model_answer" / f"{baseline}.jsonl"
        path = local if local.is_file() else ah.bench_dir(args.bench) / "model_answer" / f"{baseline}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{args.bench} {category}: no answers of its baseline {baseline} (looked for "
                                    f"{local}; upstream's are not shipped for this category)")
        _, answers = ah.load_answers(path)
        missing = [q["id"] for q in questions if q["category"] == category and q["id"] not in answers]
        if missing:
            raise ValueError(f"{path}: no answer to question {missing[0]} ({len(missing)} missing)")
        out[category] = {"model": baseline, "answers": {qid: ah.answer_text(row) for qid, row in answers.items()}}
    return out


def generate_answers(args: ArenaHardArguments, questions: Sequence[dict], gen_args: GenerationArguments, run: int,
                     progress: bool = True) -> dict[Any, str]:
    """The model's answers, resumable; written as upstream's answer file for the bench."""
    folder = run_folder(args, run)
    items = [{"id": str(q["id"]), "messages": [{"role": "user", "content": q["prompt"]}]} for q in questions]
    params = SamplingParams(n=1, temperature=args.gen_temperature, max_tokens=args.gen_max_tokens,
                            seed=args.seed + run)
    rows = generate(args.model_path, items, params, gen_args, folder / ".work" / f"{args.model_id}.jsonl", progress)
    answers = {q["id"]: row["completions"][0] for q, row in zip(questions, rows, strict=True)}
    write_jsonl(folder / "model_answer" / f"{args.model_id}.jsonl", answer_rows(args, questions, answers))
    return answers


def answer_rows(args: ArenaHardArguments, questions: Sequence[dict], answers: dict[Any, str]) -> list[dict]:
    if args.bench == ah.V01:
        encoder = _cl100k()
        return [{"question_id": q["id"], "answer_id": content_hash([args.model_id, q["id"], answers[q["id"]]])[:22],
                 "model_id": args.model_id, "tstamp": time.time(),
                 "choices": [{"index": 0, "turns": [{"content": answers[q["id"]], "token_len": (
                     len(encoder.encode(answers[q["id"]], disallowed_special=())) if encoder else None)}]}]}
                for q in questions]
    encoder = ah.gpt4o_encoder()
    return [{"uid": q["id"], "ans_id": content_hash([args.model_id, q["id"], answers[q["id"]]])[:22],
             "model": args.model_id, "tstamp": time.time(),
             "messages": [{"role": "user", "content": q["prompt"]},
                          {"role": "assistant", "content": {"answer": answers[q["id"]]}}],
             "metadata": ah.answer_metadata(answers[q["id"]], encoder)} for q in questions]


def _cl100k():
    """tiktoken's cl100k_base (v0.1's token_len), or None where it cannot be loaded (offline)."""
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base")
    except Exception:
        return None


def judge_games(args: ArenaHardArguments, settings: dict, questions: Sequence[dict], answers: dict[Any, str],
                baselines: dict[str, dict], judge: EvalJudge, run: int, progress: bool = True) -> list[dict]:
    """Both games of every question (g1: the baseline as A), v0.1's retry on no verdict; written as upstream's
    judgment file."""
    call = JudgeCall(max_tokens=judge.args.judge_max_tokens, temperature=float(settings["temperature"]))
    games = []
    for q in questions:
        base = baselines[q["category"]]["answers"][q["id"]]
        games += [ah.judge_messages(args.bench, settings, q, base, answers[q["id"]]),
                  ah.judge_messages(args.bench, settings, q, answers[q["id"]], base)]
    judged = judge.judge(games, progress, call)
    outputs = [j["output"] if j else None for j in judged]
    texts = ["" if o is None else "\n" + o for o in outputs]  # v0.1's judgment accumulates "\n" + each attempt
    verdicts = [ah.parse_verdict(args.bench, t if args.bench == ah.V01 else o, settings["patterns"])
                for t, o in zip(texts, outputs, strict=True)]
    again = [i for i, (label, retry) in enumerate(verdicts) if retry and outputs[i] is not None
             and settings["attempts"] > 1]
    if again:  # upstream v0.1: once more, the conversation continued, when the judgment held no label at all
        follow = [[*games[i], {"role": "assistant", "content": outputs[i]}, {"role": "user", "content": ah.RETRY_PROMPT}]
                  for i in again]
        for i, second in zip(again, judge.judge(follow, progress, call), strict=True):
            if second is not None:
                texts[i] += "\n" + second["output"]
                verdicts[i] = ah.parse_verdict(args.bench, texts[i], settings["patterns"])
    rows = []
    for index, q in enumerate(questions):
        pair = range(2 * index, 2 * index + 2)
        if any(outputs[i] is None for i in pair):
            continue  # a call failed for good: no row, asked again by the next run
        if args.bench == ah.V01:
            rows.append({"question_id": q["id"], "model": args.model_id, "judge": judge.name,
                         **judgment_provenance(judged[2 * index]),
                         "games": [{"user_prompt": games[i][1]["content"], "judgment": texts[i],
                                    "score": verdicts[i][0]} for i in pair]})
        else:
            rows.append({"uid": q["id"], "category": q["category"], "judge": judge.name, "model": args.model_id,
                         **judgment_provenance(judged[2 * index]),
                         "baseline": baselines[q["category"]]["model"],
                         "games": [{"score": verdicts[i][0], "judgment": {"answer": outputs[i]}, "prompt": games[i]}
                                   for i in pair]})
    path = run_folder(args, run) / "model_judgment" / judge.file_stem / f"{args.model_id}.jsonl"
    write_jsonl(path, rows)
    if len(rows) < len(questions):
        raise RuntimeError(f"{len(questions) - len(rows)} of {len(questions)} questions' judgments failed; rerun the "
                           "same command to ask for them again (the others are cached)")
    return rows
