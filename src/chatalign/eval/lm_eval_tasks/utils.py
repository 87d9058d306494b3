"""Datasets of chatalign's sample lm-eval tasks, read from the JSONL file beside this one (no hub needed)."""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
FEWSHOT = 5  # the first rows are the few-shot examples, the rest the test set


def _rows() -> list[dict]:
    with open(HERE / "gsm8k_sample.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def gsm8k_sample(**_kwargs):
    """200 GSM8K test questions (and 5 for few-shot) with their reference solutions, in gsm8k's columns."""
    import datasets

    rows = _rows()
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:FEWSHOT]),
                                 "test": datasets.Dataset.from_list(rows[FEWSHOT:])})


def gsm8k_mc_sample(**_kwargs):
    """The same questions as 4-way multiple choice: the right final answer and three others' (seeded)."""
    import datasets

    rows = _rows()
    finals = [row["answer"].split("#### ")[-1].strip() for row in rows]
    out = []
    for index, row in enumerate(rows):
        rng = random.Random(index)
        others = sorted({f for f in finals if f != finals[index]})
        choices = [finals[index], *rng.sample(others, 3)]
        rng.shuffle(choices)
        out.append({"question": row["question"], "choices": choices, "label": choices.index(finals[index])})
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(out[:FEWSHOT]),
                                 "test": datasets.Dataset.from_list(out[FEWSHOT:])})
