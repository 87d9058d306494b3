"""chatalign.data.dataset_cache: a prepared dataset is computed once per key (rows, tokenizer, template, settings)
and loaded after; the row hash depends on the rows only; an interrupted save leaves no cache behind."""

import pytest
from datasets import Dataset

from chatalign.data.dataset_cache import cached_preparation, rows_hash
from chatalign.data.templates import set_chat_template

ROWS = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(6)]


class Preparation:
    """prepare() for cached_preparation, counting its calls."""

    def __init__(self, dataset):
        self.dataset, self.calls = dataset, 0

    def __call__(self):
        self.calls += 1
        return self.dataset.map(lambda r: {"n": len(r["messages"])}), {"kept whole": len(self.dataset)}


def prepare_cached(dataset, tokenizer, tmp_path, settings=None, prepare=None):
    prepare = prepare or Preparation(dataset)
    out = cached_preparation("test_kind", dataset, ["messages"], tokenizer, settings or {"max_length": 8}, prepare,
                             tmp_path)
    return (*out, prepare)


def test_a_second_preparation_loads_the_first(tok, tmp_path):
    dataset = Dataset.from_list(ROWS)
    first, counts, loaded, prep = prepare_cached(dataset, tok, tmp_path)
    assert (loaded, prep.calls, counts) == (False, 1, {"kept whole": 6})
    again, counts_again, loaded_again, prep_again = prepare_cached(Dataset.from_list(ROWS), tok, tmp_path)
    assert (loaded_again, prep_again.calls) == (True, 0)
    assert again.to_list() == first.to_list() and counts_again == counts
    assert len(list((tmp_path / "test_kind").iterdir())) == 1  # one folder per key, no leftovers


def test_the_key_changes_with_rows_tokenizer_template_and_settings(tok, tmp_path):
    dataset = Dataset.from_list(ROWS)
    prepare_cached(dataset, tok, tmp_path)
    changed = [
        prepare_cached(Dataset.from_list(ROWS[:5]), tok, tmp_path),  # rows
        prepare_cached(dataset, tok, tmp_path, settings={"max_length": 9}),  # settings
    ]
    set_chat_template(tok, "zephyr")  # template
    changed.append(prepare_cached(dataset, tok, tmp_path))
    tok.add_special_tokens({"additional_special_tokens": ["<|new|>"]})  # tokenizer
    changed.append(prepare_cached(dataset, tok, tmp_path))
    assert [loaded for _, _, loaded, _ in changed] == [False] * 4
    assert len(list((tmp_path / "test_kind").iterdir())) == 5


def test_the_key_changes_with_the_libraries_that_render_and_encode(tok, tmp_path, monkeypatch):
    import tokenizers
    import transformers

    dataset = Dataset.from_list(ROWS)
    prepare_cached(dataset, tok, tmp_path)
    loaded = []
    for module in (transformers, tokenizers):
        monkeypatch.setattr(module, "__version__", module.__version__ + ".post1")
        loaded.append(prepare_cached(dataset, tok, tmp_path)[2])
    assert loaded == [False, False]
    assert len(list((tmp_path / "test_kind").iterdir())) == 3


def test_the_row_hash_depends_on_the_rows_only():
    # The same rows built the same way hash equal, a selection's indices included; other rows do not.
    assert rows_hash(Dataset.from_list(ROWS), ["messages"]) == rows_hash(Dataset.from_list(ROWS), ["messages"])
    whole = Dataset.from_list(ROWS + ROWS[:2])
    assert rows_hash(whole.select(range(6)), ["messages"]) == rows_hash(whole.select(range(6)), ["messages"])
    assert rows_hash(whole.select(range(6)), ["messages"]) != rows_hash(whole.select(range(1, 7)), ["messages"])
    assert rows_hash(whole.select(range(6)), ["messages"]) != rows_hash(whole, ["messages"])
    reordered = Dataset.from_list(ROWS[::-1])
    assert rows_hash(reordered, ["messages"]) != rows_hash(Dataset.from_list(ROWS), ["messages"])
    with_extra = Dataset.from_list([{**r, "source": "x"} for r in ROWS])
    assert rows_hash(with_extra, ["messages"]) == rows_hash(Dataset.from_list(ROWS), ["messages"])


def test_an_interrupted_preparation_leaves_no_cache(tok, tmp_path, monkeypatch):
    dataset = Dataset.from_list(ROWS)

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_cached(dataset, tok, tmp_path, prepare=interrupted)
    _, _, loaded, prep = prepare_cached(dataset, tok, tmp_path)
    assert (loaded, prep.calls) == (False, 1)
    monkeypatch.setattr(Dataset, "save_to_disk", lambda self, path: (_ for _ in ()).throw(OSError("disk full")))
    _, _, loaded, prep = prepare_cached(dataset, tok, tmp_path / "other")
    kind_dir = tmp_path / "other" / "test_kind"
    assert (loaded, prep.calls) == (False, 1) and not (kind_dir.exists() and any(kind_dir.iterdir()))
