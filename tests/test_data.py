"""chatalign.data: loading every kind of local source, mixing by weight, splits, filters, dedup, per-epoch resampling
and statistics. Everything runs on the shipped data/ files and small files written to tmp_path (never the hub)."""

import json
import logging
from collections import Counter

import datasets
import pandas as pd
import pytest

from chatalign.data import (
    EpochResampledDataset,
    MissingSplitError,
    MixStats,
    ResampleEachEpochCallback,
    SampleSize,
    format_stats_table,
    load_source,
    local_splits,
    log_stats,
    mix_datasets,
    parse_mixer,
    sample_indices,
    split_named_in,
)
from chatalign.formatting import DataValidationError

# --------------------------------------------------------------------------------------------------------------------
# Helpers: small canonical sft rows whose contents say where they came from ("A-q7")


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


@pytest.fixture
def two_sources(tmp_path):
    """A: 100 rows as jsonl, B: 40 rows as parquet."""
    return (
        write_jsonl(tmp_path / "a" / "A.jsonl", sft_rows("A", 100)),
        write_parquet(tmp_path / "b" / "B.parquet", sft_rows("B", 40)),
    )


# --------------------------------------------------------------------------------------------------------------------
# Loading sources


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


# --------------------------------------------------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize(
    "available, sample, expected",
    [
        (10, SampleSize(0.25), 2),
        (100, SampleSize(0.29), 29),  # 0.29 * 100 == 28.999999999999996 in binary
        (10, SampleSize(1.0), 10),
        (10, SampleSize(2.5), 25),
        (10, SampleSize(0.0), 0),
        (10, SampleSize(None, size=7), 7),
    ],
)
def test_sample_indices_counts(available, sample, expected):
    drawn = sample_indices(available, sample, 42, "src")
    assert len(drawn) == expected
    assert all(0 <= i < available for i in drawn)
    if expected <= available:
        assert len(set(drawn.tolist())) == expected  # no repeats below one full copy


def test_sample_indices_repeats_and_seeding():
    drawn = sample_indices(10, SampleSize(2.5), 42, "src").tolist()
    copies = Counter(drawn)
    assert set(copies) == set(range(10)) and sorted(Counter(copies.values()).items()) == [(2, 5), (3, 5)]
    assert (
        sample_indices(100, SampleSize(0.3), 42, "src").tolist()
        == sample_indices(100, SampleSize(0.3), 42, "src").tolist()
    )
    assert (
        sample_indices(100, SampleSize(0.3), 42, "src").tolist()
        != sample_indices(100, SampleSize(0.3), 43, "src").tolist()
    )
    assert (
        sample_indices(100, SampleSize(0.3), 42, "src").tolist()
        != sample_indices(100, SampleSize(0.3), 42, "other").tolist()
    )
    assert sample_indices(10, SampleSize(1.0), 1, "x").tolist() == list(range(10))


# --------------------------------------------------------------------------------------------------------------------
# Mixing


def test_weights_give_exact_row_counts(two_sources):
    a, b = two_sources
    mixed = mix_datasets({a: 0.25, b: 2.5}, "sft", splits=["train"])
    assert mixed.test is None
    assert per_prefix(mixed.train) == {"A": 25, "B": 100}
    copies = Counter(i for i in ids(mixed.train) if i.startswith("B"))
    assert len(copies) == 40 and sorted(Counter(copies.values()).items()) == [(2, 20), (3, 20)]
    assert Counter(mixed.train["source"]) == {a: 25, b: 100}  # the spec string, added when absent

    mixed = mix_datasets({a: {"size": 30}, b: {"fraction": 0.5}}, "sft", splits=["train"])
    assert per_prefix(mixed.train) == {"A": 30, "B": 20}
    assert len(set(ids(mixed.train))) == 50

    mixed = mix_datasets({a: 1, b: 0}, "sft", splits=["train"])
    assert sorted(ids(mixed.train)) == sorted(f"A-q{i}" for i in range(100))
    assert mixed.stats.get(b, "train").sampled == 0


def test_mix_is_deterministic_and_shuffled(two_sources):
    a, b = two_sources
    mixer = {a: 0.5, b: 1.5}
    first = mix_datasets(mixer, "sft", splits=["train"], seed=7).train.to_list()
    assert mix_datasets(mixer, "sft", splits=["train"], seed=7).train.to_list() == first
    other = mix_datasets(mixer, "sft", splits=["train"], seed=8).train.to_list()
    assert other != first and len(other) == len(first) == 110
    prefixes = [r["messages"][0]["content"][0] for r in first]
    assert prefixes != sorted(prefixes)  # sources are interleaved, not concatenated


def test_train_and_test_split_routing(tmp_path):
    folder = tmp_path / "hub_like"
    write_jsonl(folder / "train_sft.jsonl", sft_rows("TR", 50))
    write_jsonl(folder / "test_sft.jsonl", sft_rows("TE", 10))
    write_jsonl(folder / "train_gen.jsonl", sft_rows("GEN", 20))
    mixed = mix_datasets({str(folder): 0.5}, "sft", splits=["train_sft", "test_sft"])
    assert per_prefix(mixed.train) == {"TR": 25}
    assert per_prefix(mixed.test) == {"TE": 10}  # test splits are taken whole, whatever the weight
    both = mix_datasets({str(folder): 1}, "sft", splits=["train_sft", "train_gen"])
    assert per_prefix(both.train) == {"TR": 50, "GEN": 20} and both.test is None
    with pytest.raises(ValueError, match=r"\['validation'\]: every split must start with 'train' or 'test'"):
        mix_datasets({str(folder): 1}, "sft", splits=["train_sft", "validation"])


def test_test_split_size_carves_a_seeded_disjoint_test_set(two_sources):
    a, b = two_sources
    with pytest.raises(
        MissingSplitError, match=r"A.jsonl' has no split 'test' \(available: train\); set test_split_size"
    ):
        mix_datasets({a: 1}, "sft", splits=["train", "test"])
    mixed = mix_datasets({a: 1, b: 0.5}, "sft", splits=["train", "test"], test_split_size=0.1)
    test_ids = set(ids(mixed.test))
    assert per_prefix(mixed.test) == {"A": 10, "B": 4}
    assert per_prefix(mixed.train) == {"A": 90, "B": 18}  # the weight applies to what is left: 0.5 * 36
    assert not test_ids & set(ids(mixed.train))
    assert {i for i in ids(mixed.train) if i[0] == "A"} | {i for i in test_ids if i[0] == "A"} == {
        f"A-q{i}" for i in range(100)
    }
    assert mixed.stats.get(a, "train").to_test == 10 and mixed.stats.get(a, "test").carved_from == "train"
    again = mix_datasets({a: 1, b: 0.5}, "sft", splits=["train"], test_split_size=7)  # rows; implies a test split
    assert per_prefix(again.test) == {"A": 7, "B": 7} and per_prefix(again.train) == {"A": 93, "B": 16}


def test_filters_global_and_per_source(two_sources):
    a, b = two_sources
    mixed = mix_datasets({a: 1, b: 1}, "sft", splits=["train"], dataset_filter={"category": "even"})
    assert per_prefix(mixed.train) == {"A": 50, "B": 20}
    assert all(int(i.split("q")[1]) % 2 == 0 for i in ids(mixed.train))
    mixed = mix_datasets(
        {a: {"fraction": 1, "filter": {"prompt_id": ["p1", "p2", "p3"]}}, b: 1},
        "sft",
        splits=["train"],
        dataset_filter={"category": "odd"},
    )
    assert sorted(ids(mixed.train))[:2] == ["A-q1", "A-q3"] and per_prefix(mixed.train) == {"A": 2, "B": 20}
    assert mixed.stats.get(a, "train").after_filter == 2
    with pytest.raises(
        ValueError, match=r"dataset '.*B.parquet' split 'train': filter column\(s\) \['lang'\] not found"
    ):
        mix_datasets({a: 1, b: {"filter": {"lang": "en"}}}, "sft", splits=["train"])


def test_dedup_keeps_first_occurrence(tmp_path):
    a = write_jsonl(tmp_path / "A.jsonl", sft_rows("A", 100))  # prompt ids p0..p99
    b = write_jsonl(tmp_path / "B.jsonl", sft_rows("B", 40, start=90) + sft_rows("B", 1, start=95))  # p90..p129, p95
    mixed = mix_datasets({a: 1, b: 1}, "sft", splits=["train"], dedup_column="prompt_id")
    assert len(mixed.train) == 130 and len(set(mixed.train["prompt_id"])) == 130
    assert per_prefix(mixed.train) == {"A": 100, "B": 30}
    assert mixed.stats.get(a, "train").dedup_dropped == 0 and mixed.stats.get(b, "train").dedup_dropped == 11
    # dedup runs before sampling: a repeat weight still repeats the unique rows
    repeated = mix_datasets({b: 2}, "sft", splits=["train"], dedup_column="prompt_id")
    assert len(repeated.train) == 80 and repeated.stats.get(b, "train").dedup_dropped == 1


def test_max_samples_caps_each_split(two_sources):
    a, b = two_sources
    mixed = mix_datasets({a: 1, b: 1}, "sft", splits=["train"], test_split_size=0.5, max_samples=17, seed=3)
    assert len(mixed.train) == 17 and len(mixed.test) == 17
    assert (
        mixed.train.to_list()
        == mix_datasets(
            {a: 1, b: 1}, "sft", splits=["train"], test_split_size=0.5, max_samples=17, seed=3
        ).train.to_list()
    )
    finals = mixed.stats.get(a, "train").final + mixed.stats.get(b, "train").final
    assert finals == 17 and mixed.stats.get(a, "train").sampled == 50


def test_preference_sources_convert_to_sft_and_unpaired(data_dir):
    dpo = str(data_dir / "llama_factory_demo" / "dpo_en_demo.json")
    raw = load_source(dpo, "train")
    sft = mix_datasets({dpo: 1}, "sft", splits=["train"], shuffle=False).train
    assert len(sft) == 300 and sft[0]["messages"][-1]["content"] == raw[0]["chosen"]["value"]
    unpaired = mix_datasets({dpo: 1}, "unpaired", splits=["train"]).train
    assert len(unpaired) == 600 and Counter(unpaired["label"]) == {True: 300, False: 300}
    kto = str(data_dir / "llama_factory_demo" / "kto_en_demo.json")
    both = mix_datasets({dpo: 0.5, kto: {"size": 10}}, "unpaired", splits=["train"])
    assert Counter(both.train["source"]) == {dpo: 300, kto: 10}


def test_sft_sources_convert_to_prompts(two_sources):
    a, _ = two_sources
    prompts = mix_datasets({a: 1}, "prompt", splits=["train"], shuffle=False).train
    assert prompts[3]["prompt"] == [{"role": "user", "content": "A-q3"}] and prompts[3]["reference"] == "A-a3"


def test_per_source_format_overrides_detection(tmp_path):
    rows = [{"instruction": f"do {i}", "input": "", "output": f"done {i}"} for i in range(5)]
    path = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    mixed = mix_datasets({path: {"format": "alpaca"}}, "sft", splits=["train"], shuffle=False)
    assert mixed.train[0]["messages"] == [
        {"role": "user", "content": "do 0"},
        {"role": "assistant", "content": "done 0"},
    ]


def test_invalid_rows_fail_or_are_skipped_and_counted(tmp_path):
    rows = sft_rows("A", 10)
    rows[3]["messages"][0]["role"] = "gpt"
    rows[6]["messages"][1]["content"] = "  "
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataValidationError, match=r"bad.jsonl' row 3, field 'messages\[0\].role'"):
        mix_datasets({path: 1}, "sft", splits=["train"])
    mixed = mix_datasets({path: 1}, "sft", splits=["train"], skip_invalid=True)
    assert len(mixed.train) == 8
    assert mixed.stats.get(path, "train").skipped == Counter({"unknown role": 1, "empty content": 1})


@pytest.mark.parametrize(
    "mixer, message",
    [
        (
            {"x.jsonl": {"fraction": 0.5, "weight": 2}},
            r"dataset 'x.jsonl': unknown key\(s\) \['weight'\] .*valid keys: fraction, size, format, filter, split_map",
        ),
        ({"x.jsonl": -0.5}, r"dataset 'x.jsonl': weight must not be negative"),
        ({"x.jsonl": True}, r"dataset 'x.jsonl': weight must be a number"),
        ({"x.jsonl": {"size": 2.5}}, r"'size' must be a non-negative whole number"),
        ({"x.jsonl": {"size": 1, "fraction": 1}}, r"either 'fraction' or 'size'"),
        ({}, r"dataset_mixer is empty"),
    ],
)
def test_bad_mixer_specs_are_rejected_up_front(mixer, message):
    with pytest.raises(ValueError, match=message):
        parse_mixer(mixer)
    with pytest.raises(ValueError, match=message):  # before any file is opened (x.jsonl does not exist)
        mix_datasets(mixer, "sft", splits=["train"])


def test_size_larger_than_available_is_an_error(two_sources):
    a, b = two_sources
    with pytest.raises(ValueError, match=r"B.parquet': size 41 exceeds the 40 rows available.*fraction > 1"):
        mix_datasets({a: 1, b: {"size": 41}}, "sft", splits=["train"])


def test_columns_to_keep_drops_optional_columns(two_sources):
    a, b = two_sources
    assert set(mix_datasets({a: 1}, "sft", splits=["train"]).train.column_names) == {"messages", "prompt_id", "source"}
    kept = mix_datasets({a: 1, b: 1}, "sft", splits=["train"], columns_to_keep=[])
    assert set(kept.train.column_names) == {"messages", "source"}  # the schema's columns and source always stay


def test_split_map_renames_a_source_split(tmp_path):
    folder = tmp_path / "renamed"
    write_jsonl(folder / "train_prefs.jsonl", sft_rows("P", 4))
    write_jsonl(folder / "train_sft.jsonl", sft_rows("S", 6))
    mixed = mix_datasets({str(folder): {"split_map": {"train": "train_prefs"}}}, "sft", splits=["train"])
    assert per_prefix(mixed.train) == {"P": 4}


# --------------------------------------------------------------------------------------------------------------------
# Per-epoch resampling


def make_pools():
    return {
        "A": datasets.Dataset.from_list(sft_rows("A", 100)),
        "B": datasets.Dataset.from_list(sft_rows("B", 40)),
        "C": datasets.Dataset.from_list(sft_rows("C", 8)),
    }


SIZES = {"A": 0.3, "B": {"size": 10}, "C": 1.5}


def test_epoch_resampling_is_a_pure_function_of_seed_and_epoch():
    rank0 = EpochResampledDataset(make_pools(), SIZES, seed=5)
    rank1 = EpochResampledDataset(make_pools(), SIZES, seed=5)  # another process, built the same way
    epochs = {}
    for epoch in range(4):
        rank0.set_epoch(epoch)
        rank1.set_epoch(epoch)
        rows = [rank0[i] for i in range(len(rank0))]
        assert rows == [rank1[i] for i in range(len(rank1))]
        assert len(rank0) == 30 + 10 + 12
        assert rank0.counts_per_source() == {"A": 30, "B": 10, "C": 12}
        c_copies = Counter(r["messages"][0]["content"] for r in rows if r["messages"][0]["content"][0] == "C")
        assert len(c_copies) == 8 and sorted(Counter(c_copies.values()).items()) == [(1, 4), (2, 4)]
        epochs[epoch] = ids(rows)
    assert len({tuple(sorted(v)) for v in epochs.values()}) == 4  # a different subset every epoch
    rank0.set_epoch(1)
    assert ids(rank0.materialize()) == epochs[1]
    other_seed = EpochResampledDataset(make_pools(), SIZES, seed=6, epoch=1)
    assert ids(other_seed.materialize()) != epochs[1]


def test_getitem_returns_pool_rows_and_transform_applies():
    pools = make_pools()
    data = EpochResampledDataset(pools, {"A": 1, "B": 0, "C": 0}, seed=1, shuffle=False)
    assert data[7] == pools["A"][7]
    upper = EpochResampledDataset(
        pools, {"A": 0.1, "B": 0, "C": 0}, seed=1, transform=lambda r: {"n": len(r["messages"])}
    )
    assert [upper[i] for i in range(len(upper))] == [{"n": 2}] * 10
    mapped = data.map_pools(lambda r: {"q": r["messages"][0]["content"]})
    assert mapped[7]["q"] == "A-q7" and len(mapped) == 100


def test_callback_sets_epoch_from_trainer_state():
    from transformers import TrainerControl, TrainerState

    data = EpochResampledDataset(make_pools(), SIZES, seed=5)
    reference = EpochResampledDataset(make_pools(), SIZES, seed=5, epoch=2)
    callback = ResampleEachEpochCallback(data)
    callback.on_epoch_begin(None, TrainerState(epoch=2.0), TrainerControl())
    assert data.epoch == 2 and ids(data.materialize()) == ids(reference.materialize())
    callback.on_epoch_begin(None, TrainerState(epoch=2.5), TrainerControl())  # resumed mid-epoch
    assert data.epoch == 2


def test_mix_with_resample_each_epoch(two_sources):
    a, b = two_sources
    mixed = mix_datasets({a: 0.2, b: {"size": 5}}, "sft", splits=["train"], resample_each_epoch=True, max_samples=20)
    sampler = mixed.train_resampled
    assert mixed.stats.resampled_each_epoch
    assert sampler.materialize(0).to_list() == mixed.train.to_list() and len(sampler) == 20
    sampler.set_epoch(1)
    assert len(sampler) == 20 and ids(sampler.materialize()) != ids(mixed.train)
    assert mix_datasets({a: 0.2}, "sft", splits=["train"]).train_resampled is None


# --------------------------------------------------------------------------------------------------------------------
# Statistics


def table_line(table: str, source: str, split: str) -> list[str]:
    for line in table.splitlines():
        cells = line.split()
        if cells[:2] == [source, split]:
            return cells[2:]
    raise AssertionError(f"no line for {source} {split} in\n{table}")


def test_stats_table_reports_exact_counts(tmp_path, tiny_tokenizer):
    rows = sft_rows("A", 60)
    rows[4]["messages"][0]["role"] = "gpt"  # an even row: passes the filter, then is skipped as invalid
    write_jsonl(tmp_path / "A" / "train.jsonl", rows)
    write_jsonl(tmp_path / "A" / "test.jsonl", sft_rows("AT", 5, start=500))
    write_jsonl(tmp_path / "B" / "train.jsonl", sft_rows("B", 20, start=50))  # even p50..p58 duplicate A's ids
    write_jsonl(tmp_path / "B" / "test.jsonl", sft_rows("BT", 3, start=600))
    c = write_jsonl(tmp_path / "C.jsonl", sft_rows("C", 30, start=1000))  # no test split: 6 rows carved off
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    mixed = mix_datasets(
        {a: 0.5, b: {"size": 4}, c: 1},
        "sft",
        splits=["train", "test"],
        test_split_size=6,
        dataset_filter={"category": "even"},
        dedup_column="prompt_id",
        skip_invalid=True,
        tokenizer=tiny_tokenizer,
    )
    table = format_stats_table(mixed.stats)
    assert table.splitlines()[0].split() == [
        "source", "split", "available", "filtered", "skipped", "valid", "to_test", "dedup", "sampled", "final",
        "turns", "tok_mean", "tok_max",
    ]  # fmt: skip
    counts = {  # available, filtered, skipped, valid, to_test, dedup, sampled, final
        (a, "train"): ["60", "30", "1", "29", "0", "0", "14", "14"],  # floor(0.5 * 29)
        (b, "train"): ["20", "10", "0", "10", "0", "5", "4", "4"],
        (c, "train"): ["30", "15", "0", "15", "6", "0", "9", "9"],
        ("TOTAL", "train"): ["110", "55", "1", "54", "6", "5", "27", "27"],
        (a, "test"): ["5", "3", "0", "3", "0", "0", "3", "3"],  # test splits: filtered, never subsampled
        (b, "test"): ["3", "2", "0", "2", "0", "0", "2", "2"],
        (c, "test<-train"): ["6", "6", "0", "6", "0", "0", "6", "6"],
        ("TOTAL", "test"): ["14", "11", "0", "11", "0", "0", "11", "11"],
    }
    for (source, split), expected in counts.items():
        assert table_line(table, source, split)[:8] == expected, (source, split)
    assert len(mixed.train) == 27 and len(mixed.test) == 11
    assert f"  {a} [train] unknown role: 1" in table.splitlines()
    # token statistics: user + assistant contents of the final rows, tokenized without special tokens
    a_rows = [r for r in mixed.train if r["source"] == a]
    lengths = [
        len(tiny_tokenizer("\n".join(m["content"] for m in r["messages"]), add_special_tokens=False)["input_ids"])
        for r in a_rows
    ]
    assert table_line(table, a, "train")[8:] == ["2.0", f"{sum(lengths) / len(lengths):.1f}", str(max(lengths))]
    assert mixed.stats.get(a, "train").max_tokens == max(lengths)


def test_stats_table_lists_skip_reasons_and_logs(tmp_path, caplog):
    rows = sft_rows("A", 10)
    rows[3]["messages"][0]["role"] = "gpt"
    rows[4]["messages"][0]["role"] = "gpt"
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    mixed = mix_datasets({path: 1}, "sft", splits=["train"], skip_invalid=True)
    table = format_stats_table(mixed.stats)
    assert table_line(table, path, "train") == ["10", "10", "2", "8", "0", "0", "8", "8"]
    assert f"  {path} [train] unknown role: 2" in table.splitlines()
    logger = logging.getLogger("test_data_stats")
    with caplog.at_level(logging.INFO, logger="test_data_stats"):
        log_stats(mixed.stats, logger)
    assert "unknown role: 2" in caplog.text
    assert format_stats_table(MixStats()).splitlines()[0].startswith("source")


def test_trainer_sees_a_fresh_subset_each_epoch(tiny_model_dir, tmp_path):
    """Each epoch trains on its own draw. (On one process accelerate's DataLoaderShard.set_epoch also forwards to the
    dataset; with several processes it stops at the sharded sampler, which is why the callback exists.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = EpochResampledDataset(make_pools(), {"A": 0.05, "B": {"size": 3}, "C": 0}, seed=11)
    seen: dict[int, list[str]] = {}

    def collate(rows):
        seen.setdefault(data.epoch, []).extend(r["messages"][0]["content"] for r in rows)
        batch = tokenizer([r["messages"][0]["content"] for r in rows], padding=True, return_tensors="pt")
        batch["labels"] = batch["input_ids"].clone()
        return batch

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=3,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=collate,
        callbacks=[ResampleEachEpochCallback(data)],
    )
    trainer.train()
    reference = EpochResampledDataset(make_pools(), {"A": 0.05, "B": {"size": 3}, "C": 0}, seed=11)
    assert sorted(seen) == [0, 1, 2]
    for epoch in range(3):
        assert sorted(seen[epoch]) == sorted(ids(reference.materialize(epoch)))
    assert len({tuple(sorted(v)) for v in seen.values()}) == 3
