"""Message builders and normalize shortcuts shared by the formatting and adapter tests."""

import pytest
from datasets import Dataset

from chatalign import formatting as F
from chatalign.formatting import DataValidationError


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


def T(text):
    return {"role": "tool", "content": text}


def normalize(rows, schema, adapter=None, name="data/x.json", skip_invalid=False):
    return F.normalize_dataset(Dataset.from_list(rows), name, schema, adapter=adapter, skip_invalid=skip_invalid)


def error_of(rows, schema, adapter=None, name="data/x.json"):
    with pytest.raises(DataValidationError) as info:
        normalize(rows, schema, adapter=adapter, name=name)
    return info.value
