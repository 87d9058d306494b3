"""chatalign.data.sampling: mixer specs, seeded row counts and per-epoch resampling."""



from collections import Counter

import pytest
from helpers.rows import ids, make_pools

from chatalign.data.mixer import mix_datasets
from chatalign.data.sampling import (
    EpochResampledDataset,
    ResampleEachEpochCallback,
    SampleSize,
    parse_mixer,
    sample_indices,
)


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
