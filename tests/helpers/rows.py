"""Message builders, normalize shortcuts, and small sft rows and data files shared by the data-layer tests."""

import json
from collections import Counter

import datasets
import pytest
from datasets import Dataset

from chatalign.data.normalize import normalize_dataset
from chatalign.data.schemas import DataValidationError


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


def T(text):
    return {"role": "tool", "content": text}


def normalize(rows, schema, adapter=None, name="data/x.json", skip_invalid=False):
    return normalize_dataset(Dataset.from_list(rows), name, schema, adapter=adapter, skip_invalid=skip_invalid)


def error_of(rows, schema, adapter=None, name="data/x.json"):
    with pytest.raises(DataValidationError) as info:
        normalize(rows, schema, adapter=adapter, name=name)
    return info.value


# --------------------------------------------------------------------------------------------------------------------
# Small canonical sft rows whose contents say where they came from ("A-q7")


def sft_rows(prefix: str, n: int, start: int = 0, **extra) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"{prefix}-q{i}"},
                {"role": "assistant", "content": f"{prefix}-a{i}"},
            ],
            "prompt_id": f"p{i}",
            "category": "even" if i % 2 == 0 else "odd",
            **extra,
        }
        for i in range(start, start + n)
    ]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


def ids(dataset) -> list[str]:
    """Row identities (the user turn) in order."""
    return [row["messages"][0]["content"] for row in dataset]


def per_prefix(dataset) -> Counter:
    return Counter(i.split("-")[0] for i in ids(dataset))


def make_pools():
    return {
        "A": datasets.Dataset.from_list(sft_rows("A", 100)),
        "B": datasets.Dataset.from_list(sft_rows("B", 40)),
        "C": datasets.Dataset.from_list(sft_rows("C", 8)),
    }
