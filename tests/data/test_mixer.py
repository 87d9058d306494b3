"""chatalign.data.mixer: weights, splits, filters, dedup, caps, conversions and resampling of a mixture."""



from collections import Counter

import pytest
from helpers.rows import ids, make_pools, per_prefix, sft_rows, write_jsonl

from chatalign.data.mixer import mix_datasets
from chatalign.data.sampling import (
    EpochResampledDataset,
    ResampleEachEpochCallback,
)
from chatalign.data.schemas import DataValidationError
from chatalign.data.sources import MissingSplitError, load_source


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


def test_preference_sources_convert_to_prompts(data_dir):
    dpo = str(data_dir / "llama_factory_demo" / "dpo_en_demo.json")
    raw = load_source(dpo, "train")
    prompts = mix_datasets({dpo: 1}, "prompt", splits=["train"], shuffle=False).train
    assert len(prompts) == len(raw) and prompts[0]["reference"] == raw[0]["chosen"]["value"]
    assert prompts[0]["prompt"][-1]["role"] == "user"


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


def test_mix_with_resample_each_epoch(two_sources):
    a, b = two_sources
    mixed = mix_datasets({a: 0.2, b: {"size": 5}}, "sft", splits=["train"], resample_each_epoch=True, max_samples=20)
    sampler = mixed.train_resampled
    assert mixed.stats.resampled_each_epoch
    assert sampler.materialize(0).to_list() == mixed.train.to_list() and len(sampler) == 20
    sampler.set_epoch(1)
    assert len(sampler) == 20 and ids(sampler.materialize()) != ids(mixed.train)
    assert mix_datasets({a: 0.2}, "sft", splits=["train"]).train_resampled is None


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


def selfplay_rows(n_prompts: int, generations: int = 1) -> list[dict]:
    """Unpaired self-play rows: per prompt_id one real (True) row per generation, then the generations (False)."""
    rows = []
    for i in range(n_prompts):
        prompt = [{"role": "user", "content": f"q{i}"}]
        for j in range(generations):
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": f"real {i}"}],
                         "label": True, "prompt_id": f"p{i}"})
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": f"gen {i}.{j}"}],
                         "label": False, "prompt_id": f"p{i}"})
    return rows


def pair_sizes(dataset) -> Counter:
    """How many rows each prompt_id has, counted by size: {2: 100} is 100 whole pairs."""
    return Counter(Counter(dataset["prompt_id"]).values())


def test_group_column_selects_whole_self_play_pairs(tmp_path):
    path = write_jsonl(tmp_path / "selfplay" / "train.jsonl", selfplay_rows(200))
    broken = mix_datasets({path: 0.5}, "unpaired", splits=["train"], seed=3)
    assert len(broken.train) == 200 and pair_sizes(broken.train)[1] > 0  # row sampling splits pairs
    half = mix_datasets({path: 0.5}, "unpaired", splits=["train"], seed=3, group_column="prompt_id")
    assert pair_sizes(half.train) == {2: 100}  # a 0.5 fraction of 200 pairs is 100 whole pairs
    assert half.train["label"].count(True) == 100
    assert half.stats.get(path, "train").sampled == half.stats.get(path, "train").final == 200
    sized = mix_datasets({path: {"size": 30}}, "unpaired", splits=["train"], seed=3, group_column="prompt_id",
                         max_samples=7)
    assert pair_sizes(sized.train) == {2: 7}  # max_samples keeps whole pairs too
    assert pair_sizes(mix_datasets({path: {"size": 30}}, "unpaired", splits=["train"], seed=3,
                                   group_column="prompt_id").train) == {2: 30}
    repeated = mix_datasets({path: 1.5}, "unpaired", splits=["train"], seed=3, group_column="prompt_id")
    assert pair_sizes(repeated.train) == {2: 100, 4: 100}  # every pair once, half of them twice
    with pytest.raises(ValueError, match=r"size 201 exceeds the 200 groups of rows by prompt_id available"):
        mix_datasets({path: {"size": 201}}, "unpaired", splits=["train"], group_column="prompt_id")


def test_group_column_carves_whole_groups_and_keeps_their_rows_together(tmp_path):
    path = write_jsonl(tmp_path / "selfplay" / "train.jsonl", selfplay_rows(40, generations=2))
    mixed = mix_datasets({path: 1.0}, "unpaired", splits=["train", "test"], test_split_size=0.25, seed=1,
                         group_column="prompt_id")
    assert pair_sizes(mixed.train) == {4: 30} and pair_sizes(mixed.test) == {4: 10}
    assert not set(mixed.train["prompt_id"]) & set(mixed.test["prompt_id"])
    order = mixed.train["prompt_id"]
    assert all(len(set(order[k:k + 4])) == 1 for k in range(0, len(order), 4))  # shuffled as whole groups
    with pytest.raises(ValueError, match=r"resample_each_epoch cannot redraw whole groups"):
        mix_datasets({path: 0.5}, "unpaired", splits=["train"], group_column="prompt_id", resample_each_epoch=True)
    with pytest.raises(ValueError, match=r"selected in whole groups by 'prompt_id', but it has no such column"):
        mix_datasets({write_jsonl(tmp_path / "plain.jsonl", sft_rows("A", 4)): 1.0}, "sft", splits=["train"],
                     group_column="prompt_id", columns_to_keep=["messages"])


def test_dataset_splits_per_source_as_lion_mixes(tmp_path):
    """dataset_splits as {source: [splits]}: each source's own splits, train* mixed into train, test* into test."""
    uf = tmp_path / "uf"
    write_jsonl(uf / "train_prefs.jsonl", sft_rows("U", 12))
    write_jsonl(uf / "test_prefs.jsonl", sft_rows("V", 4))
    argilla = write_jsonl(tmp_path / "argilla" / "train.jsonl", sft_rows("R", 8))
    mixer = {str(uf): 1.0, argilla: 0.5}
    mixed = mix_datasets(mixer, "sft", splits={str(uf): ["train_prefs", "test_prefs"], argilla: ["train"]}, seed=0)
    assert per_prefix(mixed.train) == {"U": 12, "R": 4} and per_prefix(mixed.test) == {"V": 4}
    with pytest.raises(ValueError, match=r"has no splits for dataset_mixer source\(s\) '.*argilla/train.jsonl'"):
        mix_datasets(mixer, "sft", splits={str(uf): ["train_prefs"]})
    with pytest.raises(ValueError, match=r"dataset_splits names '.*/uff', which is not a dataset_mixer source; did "
                                         r"you mean '.*/uf'\?"):
        mix_datasets(mixer, "sft", splits={str(uf) + "f": ["train"], argilla: ["train"]})


def test_dataset_splits_mapping_from_a_recipe_and_the_command_line(tmp_path):
    from chatalign.configs import ChatalignParser, ConfigError
    from chatalign.data.arguments import DataArguments

    recipe = tmp_path / "mix.yaml"
    recipe.write_text("dataset_mixer: {a: 1.0, b: 1.0}\ndataset_splits:\n  a: [train_prefs, test_prefs]\n  b: train\n")
    parser = ChatalignParser([DataArguments])
    (args,) = parser.parse([str(recipe)])
    assert args.dataset_splits == {"a": ["train_prefs", "test_prefs"], "b": ["train"]}
    assert parser.parse(["--dataset_splits", "{a: [train], b: [train, test]}"])[0].dataset_splits == {
        "a": ["train"], "b": ["train", "test"]}
    assert parser.parse(["--dataset_splits=train,test"])[0].dataset_splits == ["train", "test"]
    assert parser.parse(["--dataset_splits", "train_sft", "test_sft"])[0].dataset_splits == ["train_sft", "test_sft"]
    assert parser.parse([])[0].dataset_splits == ["train", "test"]
    with pytest.raises(ConfigError, match=r"dataset_splits\['b'\] must be a split name or a non-empty list"):
        parser.parse(["--dataset_splits", "{a: [train], b: []}"])
