"""Re-annotate a preference set with a judge and report how often it agrees with the original chosen/rejected labels.

    python scripts/judge_dataset.py --dset_name HuggingFaceH4/ultrafeedback_binarized --dset_split train_prefs \
        --judge_model gpt-4o --eval_mode single --num_to_judge 150 --output_path data/analysis/uf-gpt4o-single.csv
    python scripts/judge_dataset.py ... --judge_model Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1 --eval_mode all

--judge_model: an LLM (a model name on --judge_base_url, default the OpenAI API; model@url; a url; a local checkpoint
folder, judged in process) or any chatalign.judges spec (reward_model:<path> for single, pairrm:<path> for pairwise).
LLM judges generate greedily (temperature 0).

--eval_mode single: each response rated alone with an UltraFeedback rubric (--rubric overall, the default, or
helpfulness; ratings 1 to 5, chatalign.judges.rubrics says where the texts come from). A pointwise judge
(reward_model:<path>) gives its score in place of the rating. --eval_mode all: both responses rated in ONE prompt
with the same rubric ("<text 1> ... <text 2>", UltraFeedback's own setup), shown in a random order seeded by --seed
and the pair id (the same on every rerun); needs an LLM judge. In both: agree when chosen is rated higher, tie when
the two ratings are equal (not an agreement), unparseable when either rating is missing or "N/A".
--eval_mode pairwise: the pair compared twice (A/B, chosen shown first and rejected shown first), the two verdicts
averaged so position bias cancels (a judge always picking the first reply gives a tie); an LLM or pairrm:<path>.
Reported: the verdict counts, agree / parseable rows, agree / (agree + disagree) and agree / all rows.

The first num_to_judge rows of the split are judged (-1: all). The CSV has one row per pair with its verdict, new
ratings (and the order shown) or per-order verdicts, the original scores and the judge's raw answers. Resumable:
verdicts per pair and every judgment (keyed by judge, rubric and texts) are stored under <output_path without
.csv>_work/; a rerun pays for nothing already judged.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

from chatalign.configs import ChatalignParser
from chatalign.generation.params import GenerationArguments
from chatalign.judges.annotate import EVAL_MODES
from chatalign.judges.loading import JudgeArguments
from chatalign.judges.rubrics import DEFAULT_RUBRIC, RUBRICS

logger = logging.getLogger("judge_dataset")


@dataclass
class JudgeDatasetArguments:
    dset_name: str | None = field(default=None, metadata={"help": "Preference set: hub id, file or folder."})
    dset_split: str = field(default="train", metadata={"help": "Split to judge."})
    dset_format: str | None = field(default=None, metadata={"help": "Adapter name (default: detected)."})
    judge_model: str | None = field(default=None, metadata={"help": "LLM (model, model@url, url, local path) or a "
                                                                     "judge spec (reward_model:, pairrm:, llm:)."})
    eval_mode: str = field(default="single", metadata={"help": f"One of {', '.join(EVAL_MODES)}."})
    rubric: str = field(default=DEFAULT_RUBRIC, metadata={"help": f"LLM rubric of single/all: {', '.join(RUBRICS)}."})
    seed: int = field(default=42, metadata={"help": "Seed of the order the responses are shown in (mode all)."})
    num_to_judge: int = field(default=150, metadata={"help": "Rows to judge, from the start of the split; -1: all."})
    output_path: str | None = field(default=None, metadata={"help": "CSV with one verdict per row."})
    work_dir: str | None = field(default=None, metadata={"help": "Resume files (default <output_path>_work)."})
    skip_invalid: bool = field(default=True, metadata={"help": "Skip malformed rows (counted)."})

    def __post_init__(self):
        missing = [k for k in ("dset_name", "judge_model", "output_path") if not getattr(self, k)]
        if missing:
            raise ValueError(f"missing required key(s): {', '.join(missing)}")
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {', '.join(EVAL_MODES)}, got {self.eval_mode!r}")
        if self.rubric not in RUBRICS:
            raise ValueError(f"rubric must be one of {', '.join(RUBRICS)}, got {self.rubric!r}")
        if self.num_to_judge == 0 or self.num_to_judge < -1:
            raise ValueError(f"num_to_judge must be -1 (all) or a positive count, got {self.num_to_judge}")
        if self.work_dir is None:
            out = Path(self.output_path)
            self.work_dir = str(out.with_name(out.stem + "_work"))


_HEAD, _TAIL = ["row", "pair_id", "prompt_id", "verdict"], ["prompt", "chosen", "rejected"]
_ORIG = ["orig_score_chosen", "orig_score_rejected"]
CSV_COLUMNS = {
    "single": [*_HEAD, "rating_chosen", "rating_rejected", *_ORIG, *_TAIL, "judge_output_chosen",
               "judge_output_rejected"],
    "all": [*_HEAD, "rating_chosen", "rating_rejected", "chosen_first", *_ORIG, *_TAIL, "judge_output"],
    "pairwise": [*_HEAD, "p_chosen", "verdict_chosen_first", "verdict_rejected_first", "position_consistent", *_ORIG,
                 *_TAIL, "judge_output_chosen_first", "judge_output_rejected_first"],
}


def make_parser() -> ChatalignParser:
    return ChatalignParser([JudgeDatasetArguments, JudgeArguments, GenerationArguments])


def main(argv=None, judge=None):
    """`judge`: a ready judge object instead of --judge_model's (tests, Python callers)."""
    args, judge_args, gen_args = make_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from chatalign.data.mixer import load_split_rows
    from chatalign.judges.annotate import agreement_summary, annotate_pairs, annotator_name, format_agreement_table
    from chatalign.judges.cache import JudgmentCache
    from chatalign.judges.loading import load_judge
    from chatalign.judges.prompts import render_conversation
    from chatalign.store import ResumableJsonl, atomic_path, judgment_key, pair_id

    # The judge first: a judge that cannot work in this mode fails before the data is loaded (models load lazily).
    judge = judge or load_judge(args.judge_model, judge_args, gen_args, default_kind="llm")
    name = annotator_name(judge, args.eval_mode, args.rubric, args.seed)

    rows, _ = load_split_rows(args.dset_name, args.dset_split, "preference", args.num_to_judge, args.skip_invalid,
                           args.dset_format)

    # Judging: verdicts keyed by (annotator, mode, pair); judgments through the shared cache.
    work = Path(args.work_dir)
    cache = JudgmentCache(work / "judgments.jsonl")
    done = ResumableJsonl(work / f"verdicts-{args.eval_mode}.jsonl", key="key")
    ids = [pair_id(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows]
    keys = [judgment_key(name, f"verdict:{args.eval_mode}", [], pid) for pid in ids]
    todo = [i for i, key in enumerate(keys) if key not in done]
    logger.info("%d rows to judge (%d done before) with %s, mode %s", len(todo), len(rows) - len(todo), name,
                args.eval_mode)
    step = max(int(getattr(judge, "chunk_size", 8)), 1)
    failed = {}  # rows whose LLM request failed outright: reported as unparseable, not stored, so a rerun retries
    for start in range(0, len(todo), step):
        chunk = todo[start:start + step]
        verdicts = annotate_pairs([rows[i] for i in chunk], judge, cache, args.eval_mode, args.rubric, args.seed)
        for i, verdict in zip(chunk, verdicts, strict=True):
            if verdict.pop("request_failed", False):
                failed[keys[i]] = verdict
            else:
                done.add({"key": keys[i], **verdict})
    if failed:
        logger.warning("%d rows had a failed judge request: unparseable in this report, retried by a rerun",
                       len(failed))

    # Report: the CSV, then the agreement table.
    verdicts = []
    for i, (row, pid, key) in enumerate(zip(rows, ids, keys, strict=True)):
        verdict = {k: v for k, v in (failed.get(key) or done.get(key)).items() if k != "key"}
        verdicts.append(verdict)
        verdict.update(row=i, pair_id=pid, prompt_id=row.get("prompt_id"), orig_score_chosen=row.get("score_chosen"),
                       orig_score_rejected=row.get("score_rejected"),
                       prompt=render_conversation(row["prompt"]), chosen=row["chosen"][0]["content"],
                       rejected=row["rejected"][0]["content"])
    summary = agreement_summary(verdicts)
    summary["judge_calls"] = cache.paid
    out = Path(args.output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS[args.eval_mode], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(verdicts)
    how = "" if args.eval_mode == "pairwise" else f", rubric {args.rubric}"
    how += f", seed {args.seed}" if args.eval_mode == "all" else ""
    title = (f"{args.dset_name} [{args.dset_split}], {len(rows)} rows, judge {judge.name}, mode {args.eval_mode}{how} "
             f"({cache.paid} judgments paid for in this run)")
    print(format_agreement_table(summary, title))
    print(f"per-row verdicts: {out}")
    return summary


if __name__ == "__main__":
    main()
