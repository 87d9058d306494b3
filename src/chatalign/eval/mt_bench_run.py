"""Running MT-Bench: a model's answers through the generation layer, single-answer judgments through the eval judge,
both written in FastChat's layout as they arrive and resumable, and the run's summary.

Answers: turn 1 of every question, then turn 2 with the model's own first answer in the conversation, each sampled at
FastChat's temperature for the question's category (``gen_temperature`` overrides), 1024 new tokens as FastChat's
gen_model_answer.py. Judgments: FastChat's four single-answer judges (with a reference answer for math, reasoning and
coding; turn 2 judged on the whole conversation). With several runs, run k lives in ``<bench_dir>/run<k>/``, each a
complete FastChat bench folder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chatalign.eval import mt_bench
from chatalign.eval.judge import EvalJudge, judgment_provenance
from chatalign.generation.generate import generate
from chatalign.generation.params import GenerationArguments, SamplingParams
from chatalign.store import content_hash, read_jsonl, write_jsonl


@dataclass
class MTBenchArguments:
    """Keys of scripts/run_mt_bench.py."""

    model_path: str | None = field(default=None, metadata={"help": "The checkpoint to evaluate (folder or hub id)."})
    model_id: str | None = field(default=None, metadata={"help": "Its name in the result files (default: the "
                                                                 "folder name)."})
    bench_dir: str = field(default="outputs/mt_bench", metadata={"help": "FastChat bench folder to write "
                                                                         "model_answer/ and model_judgment/ to."})
    question_file: str | None = field(default=None, metadata={"help": "Default: the shipped FastChat questions."})
    judge_prompt_file: str | None = field(default=None, metadata={"help": "Default: FastChat's judge prompts."})
    reference_answer_file: str | None = field(
        default=None, metadata={"help": "Reference answers for math/reasoning/coding (default: the shipped GPT-4 "
                                        "answers, whichever the judge; FastChat would look for <judge>.jsonl)."})
    mode: Literal["single", "pairwise-baseline"] = field(
        default="single", metadata={"help": "single: a 1-10 rating per answer; pairwise-baseline: games against "
                                            "baseline_model in both orders (FastChat's modes)."})
    baseline_model: str = field(default="gpt-3.5-turbo", metadata={"help": "The pairwise baseline (its answers: "
                                                                           "baseline_answer_file)."})
    baseline_answer_file: str | None = field(
        default=None, metadata={"help": "Default: <bench_dir>/model_answer/<baseline_model>.jsonl, else the shipped "
                                        "gpt-3.5-turbo answers."})
    num_runs: int = field(default=1, metadata={"help": "Generate and judge this many times (run<k>/ folders)."})
    judge_only: bool = field(default=False, metadata={"help": "Judge the answers already in bench_dir."})
    first_n: int | None = field(default=None, metadata={"help": "Only the first n questions (a quick run)."})
    categories: list[str] | None = field(default=None, metadata={"help": "Only these categories (default: all 8)."})
    per_category: int | None = field(default=None, metadata={"help": "Only the first k questions of each category "
                                                                     "(a quick run that still covers all 8)."})
    gen_temperature: float | None = field(default=None, metadata={"help": "One temperature for every category "
                                                                          "(default: FastChat's per category)."})
    gen_max_tokens: int = field(default=1024, metadata={"help": "New tokens per answer turn (FastChat: 1024)."})
    seed: int = field(default=42, metadata={"help": "Sampling seed of run 1; run k uses seed + k - 1."})

    def __post_init__(self):
        if not self.model_path and not (self.judge_only and self.model_id):
            raise ValueError("give model_path (or, with judge_only, the model_id whose answers to judge)")
        if self.num_runs < 1:
            raise ValueError(f"num_runs must be at least 1, got {self.num_runs}")
        self.model_id = self.model_id or Path(str(self.model_path).rstrip("/")).name


def run_folder(args: MTBenchArguments, run: int) -> Path:
    return Path(args.bench_dir) if args.num_runs == 1 else Path(args.bench_dir) / f"run{run + 1}"


def generate_answers(args: MTBenchArguments, questions: Sequence[dict], gen_args: GenerationArguments, run: int,
                     progress: bool = True) -> dict[Any, dict]:
    """The model's answers to both turns, resumable per turn and temperature; written as FastChat's answer file."""
    folder = run_folder(args, run)
    work = folder / ".work" / "answers" / args.model_id
    seed = args.seed + run
    first = _answer_turn(args, questions, gen_args, seed, work, 1, {}, progress)
    second = _answer_turn(args, [q for q in questions if len(q["turns"]) > 1], gen_args, seed, work, 2, first,
                          progress)
    answers = {}
    for question in questions:
        qid = question["question_id"]
        turns = [first[qid], *([second[qid]] if qid in second else [])]
        answers[qid] = {"question_id": qid, "answer_id": content_hash([args.model_id, run, qid, turns])[:22],
                        "model_id": args.model_id, "choices": [{"index": 0, "turns": turns}], "tstamp": time.time()}
    write_jsonl(folder / "model_answer" / f"{args.model_id}.jsonl", answers.values())
    return answers


def _answer_turn(args, questions, gen_args, seed, work: Path, turn: int, first: dict, progress: bool) -> dict:
    by_temperature: dict[float, list[dict]] = {}
    for question in questions:
        temperature = args.gen_temperature
        if temperature is None:
            temperature = mt_bench.TEMPERATURE_CONFIG.get(question["category"], mt_bench.DEFAULT_TEMPERATURE)
        messages = [{"role": "user", "content": question["turns"][0]}]
        if turn == 2:
            messages += [{"role": "assistant", "content": first[question["question_id"]]},
                         {"role": "user", "content": question["turns"][1]}]
        # the turn in the id gives turn 2 its own per-item seed (the same seed would repeat turn 1's draws)
        item_id = question["question_id"] if turn == 1 else f"{question['question_id']}/turn{turn}"
        by_temperature.setdefault(temperature, []).append({"id": item_id, "messages": messages,
                                                           "question_id": question["question_id"]})
    out = {}
    for temperature, items in sorted(by_temperature.items()):
        params = SamplingParams(n=1, temperature=temperature, max_tokens=args.gen_max_tokens, seed=seed)
        rows = generate(args.model_path, items, params, gen_args, work / f"turn{turn}-t{temperature:g}.jsonl",
                        progress)
        out.update({row["question_id"]: row["completions"][0] for row in rows})
    return out


def judge_answers(args: MTBenchArguments, questions: Sequence[dict], answers: dict[Any, dict], judge: EvalJudge,
                  prompts: dict[str, dict], references: dict[Any, dict] | None, run: int,
                  progress: bool = True) -> list[dict]:
    """FastChat's single-answer judgments of one model, merged into model_judgment/<judge>_single.jsonl (other
    models' rows kept); a verdict without a parseable rating scores -1, as in FastChat. With logprob scoring the
    score is the probability-weighted rating (-1 only where no rating had any probability)."""
    from chatalign.eval.rating_logprobs import expected_rating

    matches = mt_bench.single_matches(questions, [args.model_id], {args.model_id: answers}, prompts, references)
    outputs = judge.judge([m["messages"] for m in matches], progress)
    rows = []
    for match, judgment in zip(matches, outputs, strict=True):
        if judgment is None:
            continue  # the call failed for good: no row, asked again by the next run
        row = {"question_id": match["question"]["question_id"], "model": args.model_id,
               "judge": [judge.name, match["judge_prompt"]], "user_prompt": match["messages"][1]["content"],
               "judgment": judgment["output"], "score": mt_bench.parse_single_rating(judgment["output"]),
               "turn": match["turn"], "tstamp": time.time(), **judgment_provenance(judgment)}
        if "rating_probs" in judgment:
            rating = expected_rating(judgment["rating_probs"])
            row.update(score=-1 if rating is None else rating, rating_probs=judgment["rating_probs"])
        rows.append(row)
    return _merge(run_folder(args, run) / "model_judgment" / f"{judge.file_stem}_single.jsonl", rows, len(matches),
                  lambda r: r.get("model") != args.model_id)


def _merge(path: Path, rows: list[dict], wanted: int, keep) -> list[dict]:
    """Write `rows` into a judgment file in place of this model's old rows (other models' rows, `keep`, stay)."""
    others = [r for r in read_jsonl(path) if keep(r)] if path.is_file() else []
    write_jsonl(path, [*others, *rows])
    if len(rows) < wanted:
        raise RuntimeError(f"{wanted - len(rows)} of {wanted} judgments failed; rerun the same command to ask for "
                           "them again (the others are cached)")
    return rows


def baseline_answers(args: MTBenchArguments, questions: Sequence[dict]) -> dict[Any, dict]:
    """The pairwise baseline's answers, checked to cover every question."""
    path = Path(args.baseline_answer_file) if args.baseline_answer_file else (
        Path(args.bench_dir) / "model_answer" / f"{args.baseline_model}.jsonl")
    if not path.is_file() and not args.baseline_answer_file:
        path = mt_bench.MT_BENCH_DIR / "model_answer" / f"{args.baseline_model}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no answers of the baseline {args.baseline_model} at {path} (--baseline_answer_file)")
    answers = mt_bench.load_answers(path)
    if args.baseline_model not in answers:
        raise ValueError(f"{path}: no answers by model_id {args.baseline_model!r} (it holds {sorted(answers)})")
    mt_bench.check_answers(questions, {args.baseline_model: answers[args.baseline_model]}, str(path))
    return answers[args.baseline_model]


def judge_pairs(args: MTBenchArguments, questions: Sequence[dict], answers: dict[Any, dict], baseline: dict[Any, dict],
                judge: EvalJudge, prompts: dict[str, dict], references: dict[Any, dict] | None, run: int,
                progress: bool = True) -> list[dict]:
    """FastChat's pairwise-baseline games, both orders, merged into model_judgment/<judge>_pair.jsonl."""
    models = {args.model_id: answers, args.baseline_model: baseline}
    matches = mt_bench.pair_matches(questions, args.model_id, args.baseline_model, models, prompts, references)
    outputs = judge.judge([m[g] for m in matches for g in ("g1_messages", "g2_messages")], progress)
    rows = []
    for index, match in enumerate(matches):
        g1, g2 = outputs[2 * index], outputs[2 * index + 1]
        if g1 is None or g2 is None:
            continue
        output_format = prompts[match["judge_prompt"]]["output_format"]
        g1_winner, g2_winner = mt_bench.pair_winners(g1["output"], g2["output"], output_format)
        rows.append({"question_id": match["question"]["question_id"], "model_1": args.model_id,
                     "model_2": args.baseline_model, "g1_winner": g1_winner, "g2_winner": g2_winner,
                     "judge": [judge.name, match["judge_prompt"]],
                     "g1_user_prompt": match["g1_messages"][1]["content"], "g1_judgment": g1["output"],
                     "g2_user_prompt": match["g2_messages"][1]["content"], "g2_judgment": g2["output"],
                     "turn": match["turn"], "tstamp": time.time(), **judgment_provenance(g1)})
    return _merge(run_folder(args, run) / "model_judgment" / f"{judge.file_stem}_pair.jsonl", rows, len(matches),
                  lambda r: r.get("model_1") != args.model_id or r.get("model_2") != args.baseline_model)


def select_questions(args: MTBenchArguments, questions: Sequence[dict]) -> list[dict]:
    """The questions of this run: those of the chosen categories, the first k of each, then the first n."""
    if args.categories:
        unknown = sorted(set(args.categories) - {q["category"] for q in questions})
        if unknown:
            raise ValueError(f"unknown MT-Bench categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} "
                             f"(known: {', '.join(mt_bench.CATEGORIES)})")
        questions = [q for q in questions if q["category"] in args.categories]
    if args.per_category:
        seen: dict[str, int] = {}
        kept = []
        for question in questions:
            seen[question["category"]] = seen.get(question["category"], 0) + 1
            if seen[question["category"]] <= args.per_category:
                kept.append(question)
        questions = kept
    return list(questions[: args.first_n] if args.first_n else questions)
