"""chatalign.data.sources: local files, folders, save_to_disk folders and hub ids, and the split each file is."""

import json

import datasets
import pandas as pd
import pytest
from helpers.rows import ids, per_prefix, sft_rows, write_jsonl, write_parquet

from chatalign.data.mixer import mix_datasets
from chatalign.data.sources import MissingSplitError, load_source, local_splits, split_named_in


def test_loads_shipped_json_lists_and_jsonl(data_dir):
    alpaca = load_source(str(data_dir / "llama_factory_demo" / "alpaca_en_demo.json"), "train")
    assert len(alpaca) == 999 and alpaca.column_names == ["instruction", "input", "output"]
    dpo = load_source(str(data_dir / "llama_factory_demo" / "dpo_en_demo.json"), "train_prefs")
    assert len(dpo) == 300 and set(dpo.column_names) == {"conversations", "chosen", "rejected"}
    tora = load_source(str(data_dir / "tora_math_code" / "examples.jsonl"), "train")
    assert len(tora) == 30 and "messages" in tora.column_names


def test_each_file_type_loads_the_same_rows(tmp_path):
    rows = [{"instruction": f"do {i}", "input": "", "output": f"done {i}"} for i in range(7)]
    paths = {
        "jsonl": write_jsonl(tmp_path / "x.jsonl", rows),
        "parquet": write_parquet(tmp_path / "x.parquet", rows),
    }
    (tmp_path / "x.json").write_text(json.dumps(rows))  # a JSON list of rows, like data/llama_factory_demo
    paths["json"] = str(tmp_path / "x.json")
    pd.DataFrame(rows).to_csv(tmp_path / "x.csv", index=False)
    paths["csv"] = str(tmp_path / "x.csv")
    for kind, path in paths.items():
        loaded = load_source(path, "train")
        got = [{k: ("" if v is None else v) for k, v in r.items()} for r in loaded]  # csv reads "" back as None
        assert got == rows, kind


def test_folder_picks_files_by_split_name(tmp_path):
    folder = tmp_path / "ufb"
    write_jsonl(folder / "train_prefs.jsonl", sft_rows("TP", 5))
    write_jsonl(folder / "test_prefs.jsonl", sft_rows("XP", 3))
    write_parquet(folder / "data" / "train_sft-00000-of-00002.parquet", sft_rows("S", 4))
    write_parquet(folder / "data" / "train_sft-00001-of-00002.parquet", sft_rows("S", 2, start=4))
    assert local_splits(str(folder)) == ["test_prefs", "train_prefs", "train_sft"]
    assert ids(load_source(str(folder), "train_sft")) == [f"S-q{i}" for i in range(6)]  # both shards, in order
    assert len(load_source(str(folder), "train_prefs")) == 5
    assert len(load_source(str(folder), "test")) == 3  # a plain "test" is served by the only test_* split
    with pytest.raises(MissingSplitError, match=r"no split 'train' \(available: test_prefs, train_prefs, train_sft\)"):
        load_source(str(folder), "train")  # ambiguous: two train_* splits


def test_folder_without_split_names_is_one_train_split(tmp_path):
    folder = tmp_path / "plain"
    write_jsonl(folder / "part1.jsonl", sft_rows("A", 3))
    write_jsonl(folder / "part2.jsonl", sft_rows("A", 2, start=3))
    (folder / "dataset_info.json").write_text('{"not": "rows"}')  # LLaMA-Factory's registry: metadata, skipped
    (folder / ".hidden.jsonl").write_text("garbage")
    assert len(load_source(str(folder), "train")) == 5
    assert len(load_source(str(folder), "train_sft")) == 5  # train_sft falls back to a plain train split
    with pytest.raises(MissingSplitError, match=r"dataset '.*plain' has no split 'test' \(available: train\)"):
        load_source(str(folder), "test")


def test_single_file_split_comes_from_its_name(data_dir):
    outputs = str(data_dir / "tora_math_code" / "gsm8k_test_outputs.jsonl")
    assert len(load_source(outputs, "test")) == 1319
    with pytest.raises(
        MissingSplitError, match=r"gsm8k_test_outputs.jsonl' has no split 'train' \(available: test_outputs\)"
    ):
        load_source(outputs, "train")


@pytest.mark.parametrize(
    "name, split",
    [
        ("train_prefs.jsonl", "train_prefs"),
        ("test-00000-of-00003.parquet", "test"),
        ("ultrafeedback_train_gen.json", "train_gen"),
        ("gsm8k_test_outputs.jsonl", "test_outputs"),
        ("latest.jsonl", None),  # "test" inside a word is not a split
        ("alpaca_en_demo.json", None),
    ],
)
def test_split_named_in(name, split):
    assert split_named_in(name) == split


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    single = datasets.Dataset.from_list(sft_rows("A", 4))
    single.save_to_disk(str(tmp_path / "single"))
    assert ids(load_source(str(tmp_path / "single"), "train")) == ids(single)
    both = datasets.DatasetDict({"train_sft": single, "test_sft": datasets.Dataset.from_list(sft_rows("T", 2))})
    both.save_to_disk(str(tmp_path / "dict"))
    assert len(load_source(str(tmp_path / "dict"), "test_sft")) == 2
    assert len(load_source(str(tmp_path / "dict"), "train")) == 4  # the only train_* split
    with pytest.raises(MissingSplitError, match=r"no split 'train_prefs' \(available: test_sft, train_sft\)"):
        load_source(str(tmp_path / "dict"), "train_prefs")


def test_split_named_by_a_subfolder(tmp_path):
    folder = tmp_path / "hf_layout"
    write_parquet(folder / "data" / "train" / "0000.parquet", sft_rows("TR", 3))
    write_parquet(folder / "data" / "test" / "0000.parquet", sft_rows("TE", 2))
    assert local_splits(str(folder)) == ["test", "train"]
    assert per_prefix(load_source(str(folder), "test_sft")) == {"TE": 2}


def test_hub_ids_go_to_load_dataset_unchanged(monkeypatch):
    calls = []

    def fake_load_dataset(path, split=None, **kwargs):
        calls.append((path, split, kwargs))
        if split == "test_prefs":
            raise ValueError("Unknown split \"test_prefs\". Should be one of ['train_prefs'].")
        return datasets.Dataset.from_list(sft_rows("H", 2))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert len(load_source("HuggingFaceH4/ultrafeedback_binarized", "train_prefs")) == 2
    assert calls == [("HuggingFaceH4/ultrafeedback_binarized", "train_prefs", {})]
    with pytest.raises(
        MissingSplitError, match=r"'HuggingFaceH4/ultrafeedback_binarized' has no split 'test_prefs'.*train_prefs"
    ):
        load_source("HuggingFaceH4/ultrafeedback_binarized", "test_prefs")


def test_missing_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset 'data/nope/missing.jsonl': no such file"):
        load_source("data/nope/missing.jsonl", "train")
    good = write_jsonl(tmp_path / "good.jsonl", sft_rows("A", 2))
    with pytest.raises(FileNotFoundError, match="nope.parquet"):  # checked before loading any source
        mix_datasets({good: 1.0, str(tmp_path / "nope.parquet"): 1.0}, "sft", splits=["train"])
