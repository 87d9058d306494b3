"""run_dpo and precompute_ref_logprobs on the tiny Llama (CPU): training, every TRL loss type, data selection
(max_data_size, preference_config), per-pair loss weights (rm_weight_column) and precomputed reference log-probs."""

import gc
import json
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import build_tiny_llama, build_tiny_tokenizer, load_script
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from chatalign.configs import ChatalignParser, ConfigError
from chatalign.data.arguments import DataArguments
from chatalign.data.mixer import mix_datasets
from chatalign.data.tokenizers import prepare_special_tokens, tokenizer_fingerprint
from chatalign.store import pair_id, seeded_rng
from chatalign.train.dpo.arguments import (
    TRL_LOSS_TYPES,
    UNWEIGHTABLE_LOSS_TYPES,
    DPOScriptArguments,
    check_dpo_arguments,
    check_input_files,
)
from chatalign.train.dpo.importance import (
    MU_COLUMNS,
    read_pair_values,
    rm_importance_probabilities,
    rm_importance_select,
    wis_weight,
)
from chatalign.train.dpo.reference import dependency_mismatch, read_ref_logps_file
from chatalign.train.dpo.selection import (
    PAIR_WEIGHT,
    bucket_weights,
    load_preference_data,
    parse_preference_config,
    quota_select,
    score_bucket,
    select_preference_data,
    weighted_sample,
)
from chatalign.train.dpo.trainer import ChatalignDPOTrainer
from chatalign.train.models import ModelArguments


@pytest.fixture(autouse=True, scope="module")
def _cheap_gc():
    """accelerate runs gc.collect() at every train() start and end, which scans every object torch and transformers
    created at import (~0.3 s a call here); freezing those keeps the many short trainings of this file fast."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


WEIGHTABLE = [t for t in TRL_LOSS_TYPES if t not in UNWEIGHTABLE_LOSS_TYPES]


WORDS = ["cat", "dog", "sun", "sea", "tree", "rain", "bird", "fish", "moon", "star", "road", "book"]


# score differences: 1 x4, 2 x2 (+ 1.5 -> 2), 5 x2 (+ 4.6 -> 5), 0.4 -> 0, -0.5 -> -1
DIFFS = [1, 1, 1, 1, 2, 2, 5, 5, 0.4, 1.5, -0.5, 4.6]


def preference_rows(n=12, scores=True, **extra):
    rows = []
    for i in range(n):
        word = WORDS[i % len(WORDS)]
        row = {
            "prompt": [{"role": "user", "content": f"Write one short line about the {word}."}],
            "chosen": [{"role": "assistant", "content": f"The {word} is here today."}],
            "rejected": [{"role": "assistant", "content": f"No {word}."}],
            "prompt_id": f"p{i}",
        }
        if scores:
            row.update(score_chosen=6.0, score_rejected=6.0 - DIFFS[i % len(DIFFS)])
        rows.append({**row, **{k: v[i] if isinstance(v, list) else v for k, v in extra.items()}})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def pref_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("dpo_data") / "prefs.jsonl", preference_rows())


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tiny_tokenizer):
    """Same architecture and tokenizer as tiny_model_dir, other weights."""
    return build_tiny_llama(tmp_path_factory.mktemp("other_llama"), tiny_tokenizer, seed=1)


@pytest.fixture(scope="module")
def run_dpo():
    return load_script("run_dpo")


@pytest.fixture(scope="module")
def precompute():
    return load_script("precompute_ref_logprobs")


def cli(model_dir, data, out, **overrides):
    """run_dpo / precompute arguments for a fast CPU run; overrides as key=value."""
    args = {
        "model_name_or_path": str(model_dir), "dataset_mixer": f"{{{data}: 1.0}}", "dataset_splits": "train",
        "bf16": "false", "use_cpu": "true", "activation_checkpointing": "false", "max_length": 64,
        "per_device_train_batch_size": 2, "max_steps": 2, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "learning_rate": 1e-3, "disable_tqdm": "true", "output_dir": str(out), "seed": 0,
    }  # fmt: skip
    args.update(overrides)
    return [f"--{k}={v}" for k, v in args.items()]


def test_score_bucket_rounds_half_away_from_zero():
    assert [score_bucket(6, 6 - d) for d in (1, 0.4, 0.5, 1.5, 2.5, -0.5, -1.5, 4.6, -0.4)] == [
        1, 0, 1, 2, 3, -1, -2, 5, 0]  # fmt: skip


def test_preference_config_default_and_overrides():
    assert parse_preference_config({-100: 1.0, 1.0: 2.0, 5.0: 0.5}) == (1.0, {1: 2.0, 5: 0.5})
    assert parse_preference_config({"2": 0, -100: 0.25}) == (0.25, {2: 0.0})
    assert parse_preference_config({3: 2}) == (1.0, {3: 2.0})  # no -100: unlisted buckets weigh 1
    with pytest.raises(ConfigError, match=r"preference_config key 1.5 is not a whole number"):
        parse_preference_config({1.5: 1.0})
    with pytest.raises(ConfigError, match=r"preference_config\[2\] must be a finite weight >= 0, got -1"):
        parse_preference_config({2: -1})


def test_bucket_weights_of_the_documented_example():
    ds = Dataset.from_list(preference_rows())
    buckets, weights = bucket_weights(ds, {-100: 1.0, 1.0: 2.0, 5.0: 0.5})
    assert buckets == [1, 1, 1, 1, 2, 2, 5, 5, 0, 2, -1, 5]
    assert weights.tolist() == [2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 0.5]


def test_rows_without_scores_are_an_error_naming_the_row():
    rows = preference_rows(4)
    rows[2]["score_rejected"] = None
    ds = Dataset.from_list(rows).add_column("source", ["data/prefs.jsonl"] * 4)
    with pytest.raises(ValueError) as err:
        bucket_weights(ds, {-100: 1.0})
    assert str(err.value) == ("train row 2 (source 'data/prefs.jsonl', prompt_id 'p2'), field 'score_rejected': "
                              "preference_config needs both scores, got None")
    no_scores = Dataset.from_list(preference_rows(2, scores=False)).add_column("source", ["demo.json"] * 2)
    with pytest.raises(ValueError, match=r"the train data has no score_chosen or score_rejected column "
                                         r"\(sources: demo.json\)"):
        bucket_weights(no_scores, {-100: 1.0})


def test_weighted_sample_is_efraimidis_spirakis_with_the_seed():
    weights = np.array([2.0, 0.0, 1.0, 0.5, 3.0, 1.0, 0.0, 2.0])
    u = 1.0 - seeded_rng(7, "dpo_data_selection").random(len(weights))
    with np.errstate(divide="ignore"):
        keys = np.where(weights > 0, u ** (1.0 / weights), -1.0)  # the documented key u ** (1 / w)
    expected = np.sort(np.argsort(-keys)[:4])
    assert weighted_sample(weights, 4, seed=7).tolist() == expected.tolist()
    assert weighted_sample(weights, 4, seed=7).tolist() == weighted_sample(weights, 4, seed=7).tolist()
    assert weighted_sample(weights, 6, seed=3).tolist() == [0, 2, 3, 4, 5, 7]  # every row of weight > 0
    with pytest.raises(ValueError, match="cannot draw 7 rows: only 6 have a positive weight"):
        weighted_sample(weights, 7, seed=3)


def test_weighted_sample_draws_in_proportion_to_weight():
    # One draw from weights [1, 3]: row 1 with probability 3/4.
    hits = sum(weighted_sample(np.array([1.0, 3.0]), 1, seed).tolist() == [1] for seed in range(4000))
    assert abs(hits / 4000 - 0.75) < 0.025
    # Two draws without replacement from [1, 1, 2]: P(row 2 drawn) = 1/2 + 2 * 1/4 * 2/3 = 5/6.
    hits = sum(2 in weighted_sample(np.array([1.0, 1.0, 2.0]), 2, seed) for seed in range(4000))
    assert abs(hits / 4000 - 5 / 6) < 0.025


def test_preference_config_selection_counts_per_bucket():
    ds = Dataset.from_list(preference_rows())
    selected, counts = select_preference_data(ds, 6, {-100: 1.0, 1: 2.0, 5: 0.0, -1: 0}, seed=11, sampling="weighted")
    buckets = counts["buckets"]
    assert {b: (v["weight"], v["available"]) for b, v in buckets.items()} == {
        -1: (0.0, 1), 0: (1.0, 1), 1: (2.0, 4), 2: (1.0, 3), 5: (0.0, 3)}  # fmt: skip
    assert (counts["available"], counts["eligible"], counts["selected"], len(selected)) == (12, 8, 6, 6)
    assert buckets[5]["selected"] == buckets[-1]["selected"] == 0  # weight 0 excludes the bucket
    assert sum(v["selected"] for v in buckets.values()) == 6
    chosen_buckets = [score_bucket(r["score_chosen"], r["score_rejected"]) for r in selected]
    assert {b: chosen_buckets.count(b) for b in set(chosen_buckets)} == {
        b: v["selected"] for b, v in buckets.items() if v["selected"]}
    # A budget over the eligible rows takes them all; no budget means every eligible row.
    assert select_preference_data(ds, 100, {-100: 1.0, 5: 0}, seed=1, sampling="weighted")[1]["selected"] == 9
    assert len(select_preference_data(ds, None, {-100: 1.0, 5: 0}, seed=1, sampling="weighted")[0]) == 9


def test_max_data_size_is_the_all_ones_weighted_preference_config():
    ds = Dataset.from_list(preference_rows())
    plain, counts = select_preference_data(ds, 5, None, seed=4)
    ones, _ = select_preference_data(ds, 5, {-100: 1.0}, seed=4, sampling="weighted")
    assert len(plain) == 5 and counts == {"available": 12, "eligible": 12, "selected": 5}
    assert plain["prompt_id"] == ones["prompt_id"]
    assert plain["prompt_id"] == select_preference_data(ds, 5, None, seed=4)[0]["prompt_id"]
    assert plain["prompt_id"] != select_preference_data(ds, 5, None, seed=5)[0]["prompt_id"]


def lion_kept_per_bin(diffs, preference_config, max_data_size):
    """LION's control_preference_strength (zephyr_dpo_pref_strength.py), transcribed: how many pairs it keeps per
    bin. It samples with numpy's global RNG, so counts and bin membership are what two implementations share."""
    bins = np.linspace(0, 9, 10)
    weights_for_each_bin, all_weights = {}, []
    for b in bins:
        weight = preference_config[b] if b in preference_config else preference_config[-100]
        weights_for_each_bin[b] = weight
        all_weights.append(weight)
    sample_per_unit_weight = max_data_size // sum(all_weights)
    bin_to_data_idx = {}
    for data_idx, bin_idx in enumerate(np.digitize(diffs, bins=bins, right=False) - 1):
        bin_to_data_idx.setdefault(int(bin_idx), []).append(data_idx)
    return {bin_idx: min(len(indices), int(sample_per_unit_weight * weights_for_each_bin[bins[bin_idx]]))
            for bin_idx, indices in bin_to_data_idx.items()}


@pytest.mark.parametrize("config, budget", [({-100: 1.0}, 60), ({-100: 1.0, 1.0: 2.0, 5.0: 0.5}, 100),
                                            ({-100: 0.5, 3: 3, 9: 0}, 47), ({-100: 1, 0: 4}, 1000)])
def test_quota_sampling_keeps_as_many_pairs_per_bin_as_lion(config, budget):
    rng = np.random.default_rng(0)
    # every bin edge exactly (1.0 is bin 1, not 0), values past 9 (bin 9), and a uneven spread of strengths
    diffs = np.concatenate([np.arange(0.0, 10.0), [9.0, 10.5, 17.0, 0.999, 1.0, 8.999],
                            rng.uniform(0, 4, 120), rng.uniform(4, 12, 25)])
    indices, counts = quota_select(diffs, config, budget, seed=3)
    assert {b: v["selected"] for b, v in counts["bins"].items() if v["available"]} == lion_kept_per_bin(
        diffs, config, budget)
    assert counts["selected"] == len(indices) == len(set(indices.tolist()))
    bins = np.minimum(np.floor(diffs), 9).astype(int)
    for b, v in counts["bins"].items():
        assert sum(bins[indices] == b) == v["selected"] and v["available"] == sum(bins == b)
        assert v["selected"] == min(v["available"], v["quota"])
    again, _ = quota_select(diffs, config, budget, seed=3)
    other, _ = quota_select(diffs, config, budget, seed=4)
    sampled = any(v["available"] > v["quota"] for v in counts["bins"].values())  # else every bin is kept whole
    assert again.tolist() == indices.tolist() and (other.tolist() != indices.tolist()) == sampled


def test_quota_sampling_uniform_config_means_the_same_count_per_bin(caplog):
    diffs = np.repeat(np.arange(10) + 0.5, 30)  # 30 pairs in every bin
    indices, counts = quota_select(np.concatenate([diffs, [-0.5, -3.0]]), {-100: 1.0}, 100, seed=0)
    assert {b: v["selected"] for b, v in counts["bins"].items()} == {b: 10 for b in range(10)}
    assert counts["excluded: negative difference"] == 2 and max(indices) < len(diffs)  # negatives never selected
    assert "2 pairs have score_chosen < score_rejected and are excluded" in caplog.text


def test_quota_sampling_config_errors():
    with pytest.raises(ConfigError, match=r"preference_config key 12: quota sampling has the bins 0..9"):
        parse_preference_config({-100: 1.0, 12: 2.0})
    assert parse_preference_config({-100: 1.0, 12: 2.0}, "weighted") == (1.0, {12: 2.0})
    with pytest.raises(ValueError, match=r"gives every bin weight 0"):
        quota_select(np.array([1.0, 2.0]), {-100: 0}, 10, seed=0)
    ds = Dataset.from_list(preference_rows())
    with pytest.raises(ConfigError, match=r"quota sampling needs max_data_size"):
        select_preference_data(ds, None, {-100: 1.0}, seed=0)
    with pytest.raises(ValueError, match=r"preference_config selects no pair: 0 pairs per unit of weight"):
        select_preference_data(ds, 5, {-100: 1.0}, seed=0)


def test_max_data_size_subset_of_the_mixture_is_exact_and_seeded(pref_file, tiny_tokenizer, tmp_path):
    parser = ChatalignParser([ModelArguments, DataArguments, DPOConfig, DPOScriptArguments])

    def load(seed, size):
        _, data_args, training_args, script_args = parser.parse(
            cli("unused", pref_file, tmp_path, seed=seed, max_data_size=size))
        return load_preference_data(data_args, training_args, script_args, tiny_tokenizer)

    train, evaluation, counts = load(0, 7)
    assert len(train) == 7 and evaluation is None
    assert counts == {"train": {"rows": 7, "selection": {"available": 12, "eligible": 12, "selected": 7}}}
    assert train["prompt_id"] == load(0, 7)[0]["prompt_id"]
    assert train["prompt_id"] != load(1, 7)[0]["prompt_id"]
    assert set(load(0, 5)[0]["prompt_id"]) < set(train["prompt_id"])  # a smaller budget draws a subset

    # preference_config through a recipe: LION's quota rule by default, the weighted draw when named.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("max_data_size: 20\npreference_config: {-100: 1.0, 1.0: 2.0, 5.0: 0.0}\n")
    _, data_args, training_args, script_args = parser.parse([str(recipe), *cli("unused", pref_file, tmp_path)])
    train, _, counts = load_preference_data(data_args, training_args, script_args, tiny_tokenizer)
    selection = counts["train"]["selection"]
    # 20 // (8 * 1.0 + 2.0 + 0.0) = 2 pairs per unit weight; DIFFS give bins 0: 1 pair, 1: 5, 2: 2, 4: 1, 5: 2, and
    # one negative difference
    assert {b: (v["quota"], v["available"], v["selected"]) for b, v in selection["bins"].items() if v["available"]} == {
        0: (2, 1, 1), 1: (4, 5, 4), 2: (2, 2, 2), 4: (2, 1, 1), 5: (0, 2, 0)}
    assert (len(train), selection["excluded: negative difference"]) == (8, 1)
    _, data_args, training_args, script_args = parser.parse([str(recipe), *cli("unused", pref_file, tmp_path),
                                                             "--max_data_size=6", "--preference_sampling=weighted"])
    train, _, counts = load_preference_data(data_args, training_args, script_args, tiny_tokenizer)
    buckets = counts["train"]["selection"]["buckets"]
    assert len(train) == 6 and buckets[5] == {"weight": 0.0, "available": 3, "selected": 0}
    assert buckets[1]["weight"] == 2.0 and sum(b["selected"] for b in buckets.values()) == 6


def parse(argv):
    return ChatalignParser([ModelArguments, DataArguments, DPOConfig, DPOScriptArguments]).parse(argv)


@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_every_trl_loss_type_parses(loss_type, tmp_path):
    _, data_args, training_args, script_args = parse([f"--loss_type={loss_type}", f"--output_dir={tmp_path}",
                                                      "--use_cpu=true", "--activation_checkpointing=false"])
    check_dpo_arguments(training_args, data_args, script_args)
    assert training_args.loss_type == [loss_type]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--loss_type=sigmod"], "loss_type ['sigmod'] unknown: TRL's DPO losses are sigmoid, hinge"),
        (["--loss_type", "sigmoid", "sft", "--rm_weight_column=w"],
         "rm_weight_column cannot weight loss_type 'sft': it is one token-level mean over the whole batch"),
        (["--loss_type=aot", "--rm_weight_column=w"], "rm_weight_column cannot weight loss_type 'aot': it sorts"),
        (["--max_data_size=0"], "max_data_size must be a positive number of pairs, got 0"),
        (["--preference_config={1: -2}"], "preference_config[1] must be a finite weight >= 0, got -2"),
        (["--preference_config={-100: 1.0}"], "preference_config with preference_sampling quota (LION's rule) needs "
                                               "max_data_size"),
        (["--preference_config={10: 1.0}", "--max_data_size=9"], "preference_config key 10: quota sampling has the "
                                                                  "bins 0..9"),
        (["--preference_sampling=uniform"], "key 'preference_sampling' in the command line: expected one of 'quota', "
                                            "'weighted'"),
        (["--resample_each_epoch"], "resample_each_epoch is not supported by run_dpo"),
    ],
)
def test_config_errors_before_loading(argv, message, tmp_path):
    with pytest.raises(ConfigError) as err:  # at parse time or in the checks, both before any data or model
        _, data_args, training_args, script_args = parse([*argv, f"--output_dir={tmp_path}", "--use_cpu=true",
                                                          "--activation_checkpointing=false"])
        check_dpo_arguments(training_args, data_args, script_args)
    assert message in str(err.value)


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    """A policy nudged away from its reference, so log-ratios (and every loss) are non-trivial."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return policy, ref, tokenizer


def dpo_config(out, **kw):
    base = dict(output_dir=str(out), report_to="none", use_cpu=True, bf16=False, activation_checkpointing=False,
                per_device_train_batch_size=2, max_steps=1, save_strategy="no", disable_tqdm=True, max_length=64)
    return DPOConfig(**{**base, **kw})


def loss_kwargs(loss_type):
    return {"label_smoothing": 0.1} if loss_type in ("exo_pair", "robust", "aot", "aot_unpaired") else {}


@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_every_loss_type_trains_one_step(loss_type, tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = model.lm_head.weight.detach().clone()
    trainer = ChatalignDPOTrainer(model=model, ref_model=ref, args=dpo_config(tmp_path, loss_type=[loss_type],
                                  logging_steps=1, learning_rate=1e-2, **loss_kwargs(loss_type)),
                                  train_dataset=Dataset.from_list(preference_rows(2, scores=False)),
                                  processing_class=tokenizer)
    trainer.train()
    log = trainer.state.log_history[0]
    assert math.isfinite(log["loss"]) and "rewards/margins" in log
    assert not torch.equal(before, model.lm_head.weight)


def batch_loss(trainer, weights=None):
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    if weights is not None:
        rows = [{**row, PAIR_WEIGHT: w} for row, w in zip(rows, weights, strict=True)]
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, trainer.data_collator(rows)).item()


@pytest.mark.parametrize(
    "loss_type, extra",
    [(t, {}) for t in WEIGHTABLE]
    + [
        (["sigmoid", "ipo", "bco_pair"], {"loss_weights": [0.5, 0.2, 1.0]}),
        ("sigmoid", {"f_divergence_type": "js_divergence"}),
        ("hinge", {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3}),
        ("sigmoid", {"ld_alpha": 0.5}),
        ("sigmoid", {"use_weighting": True}),
    ],
)
def test_weights_of_one_give_trl_loss_exactly(loss_type, extra, models, tmp_path):
    policy, ref, tokenizer = models
    loss_type = [loss_type] if isinstance(loss_type, str) else loss_type
    config = dict(loss_type=loss_type, **loss_kwargs(loss_type[0]), **extra)
    rows = Dataset.from_list(preference_rows(3, scores=False))
    stock = DPOTrainer(model=policy, ref_model=ref, args=dpo_config(tmp_path, **config), train_dataset=rows,
                       processing_class=tokenizer)
    weighted = ChatalignDPOTrainer(model=policy, ref_model=ref, args=dpo_config(tmp_path, **config),
                                   train_dataset=rows, processing_class=tokenizer, weighted=True)
    assert batch_loss(weighted, [1.0, 1.0, 1.0]) == batch_loss(stock)
    assert weighted._metrics["train"]["rewards/margins"] == stock._metrics["train"]["rewards/margins"]


def test_pair_weights_multiply_each_pairs_loss(models, tmp_path):
    policy, ref, tokenizer = models
    trainer = ChatalignDPOTrainer(model=policy, ref_model=ref, args=dpo_config(tmp_path, beta=0.1),
                                  train_dataset=Dataset.from_list(preference_rows(2, scores=False)),
                                  processing_class=tokenizer, weighted=True)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    policy_chosen, policy_rejected = trainer.compute_ref_log_probs(policy, batch)  # no-grad sequence log-probs
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(ref, batch)
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    per_pair = [-math.log(1 / (1 + math.exp(-0.1 * m))) for m in margin.tolist()]  # -log sigmoid(beta * margin)
    assert batch_loss(trainer, [0.0, 1.0]) == pytest.approx(per_pair[1] / 2, abs=1e-6)
    assert batch_loss(trainer, [1.0, 0.0]) == pytest.approx(per_pair[0] / 2, abs=1e-6)
    assert batch_loss(trainer, [2.0, 0.5]) == pytest.approx((2 * per_pair[0] + 0.5 * per_pair[1]) / 2, abs=1e-6)
    # The gradient is weighted too: weight 0 on both pairs leaves no gradient at all.
    policy.zero_grad()
    trainer.compute_loss(policy, trainer.data_collator(
        [{**trainer.train_dataset[i], PAIR_WEIGHT: 0.0} for i in range(2)])).backward()
    assert all(p.grad is None or not p.grad.any() for p in policy.parameters())
    policy.zero_grad()


def test_weighted_trainer_rejects_unweightable_loss(models, tmp_path):
    policy, ref, tokenizer = models
    with pytest.raises(ValueError, match="per-pair weights do not apply to loss_type 'aot_unpaired'"):
        ChatalignDPOTrainer(model=policy, ref_model=ref, args=dpo_config(tmp_path, loss_type=["aot_unpaired"]),
                            train_dataset=Dataset.from_list(preference_rows(2)), processing_class=tokenizer,
                            weighted=True)


def test_run_dpo_trains_saves_and_reloads(run_dpo, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    demo = data_dir / "llama_factory_demo" / "dpo_en_demo.json"
    trainer = run_dpo.main(cli(tiny_model_dir, demo, out, max_length=128, max_data_size=24, max_steps=3,
                               save_strategy="steps", save_steps=2))
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert len(history) == 3 and all(math.isfinite(h["loss"]) for h in history)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert all(key in h for h in history)
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert "rewards/margins" in state["log_history"][0]
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    final = AutoModelForCausalLM.from_pretrained(out)
    assert not torch.equal(initial.lm_head.weight, final.lm_head.weight)
    assert torch.equal(final.lm_head.weight, trainer.model.lm_head.weight)
    AutoModelForCausalLM.from_pretrained(out / "checkpoint-2")
    results = json.loads((out / "train_results.json").read_text())
    kept = len(trainer.train_dataset)
    assert results["train_samples"] == kept
    assert results["data"]["train"] == {
        "rows": 24, "selection": {"available": 300, "eligible": 300, "selected": 24},
        "dropped: prompt fills max_length": 24 - kept}  # fmt: skip
    run_args = yaml.safe_load((out / "run_args.yaml").read_text())["args"]
    assert run_args["max_data_size"] == 24 and run_args["loss_type"] == ["sigmoid"]
    # Resume: from checkpoint-2 on to step 4, with the same data selection.
    resumed = run_dpo.main(cli(tiny_model_dir, demo, out, max_length=128, max_data_size=24, max_steps=4,
                               save_strategy="steps", save_steps=2, resume_from_checkpoint="true"))
    steps = [h["step"] for h in resumed.state.log_history if "loss" in h]
    assert steps == [1, 2, 3, 4] and resumed.state.global_step == 4
    assert [h["loss"] for h in resumed.state.log_history[:2]] == [h["loss"] for h in history[:2]]


def test_run_dpo_reference_from_ref_model_name_or_path(run_dpo, tiny_model_dir, other_model_dir, pref_file, tmp_path):
    trainer = run_dpo.main(cli(tiny_model_dir, pref_file, tmp_path, ref_model_name_or_path=other_model_dir,
                               max_steps=1, max_data_size=5))
    # train_data_ids.csv: the prompt_id of each pair trained on, after the max_data_size draw (as LION writes it)
    lines = (tmp_path / "train_data_ids.csv").read_text().splitlines()
    mixed = mix_datasets({str(pref_file): 1.0}, "preference", splits=["train"], seed=0).train
    expected = select_preference_data(mixed, 5, None, seed=0)[0]["prompt_id"]
    assert lines[0] == "prompt_id" and sorted(lines[1:]) == sorted(expected) and len(expected) == 5
    other = AutoModelForCausalLM.from_pretrained(other_model_dir)
    assert torch.equal(trainer.ref_model.lm_head.weight, other.lm_head.weight)
    assert trainer.state.log_history[0]["rewards/margins"] != 0.0  # the policy starts away from this reference


def test_run_dpo_lora_uses_the_adapter_disabled_model_as_reference(run_dpo, tiny_model_dir, pref_file, tmp_path):
    trainer = run_dpo.main(cli(tiny_model_dir, pref_file, tmp_path, use_peft="true", lora_r=4, lora_alpha=8,
                               lora_target_modules="q_proj,v_proj", max_steps=1))
    assert trainer.ref_model is None
    assert math.isfinite(trainer.state.log_history[0]["loss"])
    # LoRA B starts at zero: at step 1 the policy is the reference, so every reward is exactly 0.
    assert trainer.state.log_history[0]["rewards/margins"] == 0.0


def test_run_dpo_rm_weight_column(run_dpo, tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "weighted.jsonl", preference_rows(4, rm_weight=[0.0, 0.0, 0.0, 0.0]))
    trainer = run_dpo.main(cli(tiny_model_dir, data, tmp_path / "out", rm_weight_column="rm_weight", max_steps=1,
                               precompute_ref_log_probs="true"))  # TRL's reference pass collates the weight too
    assert trainer.state.log_history[0]["loss"] == 0.0 and trainer.state.log_history[0]["grad_norm"] == 0.0
    bad = write_jsonl(tmp_path / "bad.jsonl", preference_rows(4, rm_weight=[1.0, 1.0, -2.0, 1.0]))
    with pytest.raises(ValueError, match=r"train row \d \(source '.*bad.jsonl', prompt_id 'p2'\), field 'rm_weight': "
                                         r"a pair weight must be a finite number >= 0, got -2.0"):
        run_dpo.main(cli(tiny_model_dir, bad, tmp_path / "out2", rm_weight_column="rm_weight"))
    unweighted = write_jsonl(tmp_path / "plain.jsonl", preference_rows(4))
    with pytest.raises(ValueError, match=r"dataset '.*plain.jsonl'.*missing column rm_weight named by the recipe"):
        run_dpo.main(cli(tiny_model_dir, unweighted, tmp_path / "out3", rm_weight_column="rm_weight"))


@pytest.fixture(scope="module")
def precomputed(precompute, tiny_model_dir, pref_file, tmp_path_factory):
    """A precompute file of 8 of the 12 pairs (max_data_size=8), plus the test split carved off for evaluation."""
    tmp = tmp_path_factory.mktemp("precompute")
    path = tmp / "ref_logps.parquet"
    argv = cli(tiny_model_dir, pref_file, tmp / "pre", precompute_file_path=path, precompute_ref_batch_size=8,
               max_data_size=8, test_split_size=2, eval_strategy="steps", eval_steps=2)
    precompute.main(argv)
    return path, argv


def test_precompute_file_holds_trl_reference_logps(precomputed, tiny_model_dir, pref_file, tmp_path):
    path, _ = precomputed
    data = read_ref_logps_file(path)
    deps = data.meta["dependencies"]
    assert data.meta["format"] == "chatalign-ref-logps/1" and data.meta["rows"] == 10 == len(data.logps)
    assert deps["max_length"] == 64 and deps["model"] == str(tiny_model_dir.resolve()) and not data.dropped
    # Bit-identical to TRL's own reference pass over the same rows in the same batches.
    rows = [json.loads(line) for line in pref_file.read_text().splitlines()]
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trl_pass = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          args=dpo_config(tmp_path, precompute_ref_log_probs=True, precompute_ref_batch_size=8),
                          train_dataset=dataset, processing_class=tokenizer).train_dataset
    matched = 0
    for row in trl_pass:
        key = pair_id(row["prompt"], row["chosen"], row["rejected"])
        if key in data.logps:
            assert data.logps[key] == (row["ref_chosen_logps"], row["ref_rejected_logps"])
            matched += 1
    assert matched == len(data.logps) == 10  # every pair of the file was compared, none skipped by a key mismatch


def test_precompute_skips_what_it_has_and_adds_what_is_missing(precompute, precomputed, tmp_path, monkeypatch):
    import chatalign.train.models

    path, argv = precomputed
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(path.read_bytes())
    argv = [a for a in argv if not a.startswith("--precompute_file_path")] + [f"--precompute_file_path={copy}"]
    with monkeypatch.context() as patch:  # nothing missing: no model is even loaded
        patch.setattr(chatalign.train.models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
        assert len(precompute.main(argv)) == 10
    before = read_ref_logps_file(copy).logps
    after = precompute.main([*argv, "--max_data_size=10"]).logps
    assert len(after) == 12 and all(after[k] == v for k, v in before.items())


def test_online_and_precomputed_reference_train_alike(run_dpo, precomputed, tmp_path):
    path, argv = precomputed
    argv = [a for a in argv if not a.startswith(("--output_dir", "--precompute_file_path"))] + ["--max_steps=3"]
    online = run_dpo.main([*argv, f"--output_dir={tmp_path / 'online'}"])
    given = run_dpo.main([*argv, f"--output_dir={tmp_path / 'given'}", f"--precompute_file_path={path}"])
    assert online.ref_model is not None and given.ref_model is None
    keys = ("loss", "rewards/margins", "eval_loss", "eval_rewards/margins")
    logged = [[(h[k], k) for k in keys if k in h] for h in online.state.log_history]
    compared = [(a, b[k], k) for row, b in zip(logged, given.state.log_history, strict=True) for a, k in row]
    assert [k for _, _, k in compared].count("loss") == 3 and [k for _, _, k in compared].count("eval_loss") >= 1
    assert all(abs(a - b) < 1e-5 for a, b, _ in compared), compared
    for p, q in zip(online.model.parameters(), given.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=0)


def test_precomputed_file_mismatch_errors(run_dpo, precomputed, tiny_model_dir, other_model_dir, tmp_path,
                                          monkeypatch):
    import chatalign.train.models

    path, argv = precomputed
    argv = [a for a in argv if not a.startswith("--output_dir")] + [f"--output_dir={tmp_path / 'out'}"]
    monkeypatch.setattr(chatalign.train.models, "load_model", lambda *a, **k: pytest.fail("model loaded before the check"))

    # A training row the file lacks: the first one in training order is named.
    _, data_args, training_args, script_args = parse([*argv, "--max_data_size=10"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train = load_preference_data(data_args, training_args, script_args, tokenizer)[0]
    stored = read_ref_logps_file(path)
    first = next(i for i, row in enumerate(train) if pair_id(row["prompt"], row["chosen"], row["rejected"])
                 not in stored)  # fmt: skip
    with pytest.raises(ValueError) as err:
        run_dpo.main([*argv, "--max_data_size=10"])
    assert str(err.value) == (
        f"precomputed file {path}: row {first} of the training data (prompt_id {train[first]['prompt_id']!r}) has no "
        "entry; run scripts/precompute_ref_logprobs.py with this recipe to add the missing rows")

    with pytest.raises(ValueError) as err:
        run_dpo.main([*argv, "--max_length=48"])
    assert str(err.value) == f"precomputed file {path}: precomputed with max_length=64, this run uses 48"

    with pytest.raises(ValueError) as err:
        run_dpo.main([*argv, f"--ref_model_name_or_path={other_model_dir}"])
    assert str(err.value) == (f"precomputed file {path}: precomputed with reference model "
                              f"'{tiny_model_dir.resolve()}', this run uses '{other_model_dir.resolve()}'")

    with pytest.raises(ValueError, match=r"precomputed with a different chat template \(hash [0-9a-f]{12}, this run"):
        run_dpo.main([*argv, "--chat_template=zephyr"])

    other = tmp_path / "other_tokenizer"
    other_tokenizer = build_tiny_tokenizer(other, vocab_size=900)
    with pytest.raises(ValueError) as err:
        run_dpo.main([*argv, f"--tokenizer_name_or_path={other}"])
    # This run's tokenizer is the other one with its special tokens prepared (pad and sep set), as the run loads it.
    prepare_special_tokens(other_tokenizer)
    theirs, ours = stored.meta["dependencies"]["tokenizer"], tokenizer_fingerprint(other_tokenizer)
    assert str(err.value) == (f"precomputed file {path}: precomputed with a different tokenizer "
                              f"(hash {theirs[:12]}, this run {ours[:12]})")


def test_pair_id_and_dependency_messages():
    prompt = [{"role": "user", "content": "hi"}]
    chosen, rejected = [{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]
    key = pair_id(prompt, chosen, rejected)
    assert key == pair_id([{"content": "hi", "role": "user", "tool_calls": None}], chosen, rejected)
    assert key != pair_id(prompt, rejected, chosen)
    current = {"model": "/m", "model_config": "c" * 64, "tokenizer": "t" * 64, "max_length": 1024}
    assert dependency_mismatch(current, current) is None
    assert dependency_mismatch({**current, "model": "/n"}, current) == (
        "precomputed with reference model '/n', this run uses '/m'")
    assert dependency_mismatch({**current, "model_config": "d" * 64, "max_length": 512}, current) == (
        f"precomputed with a different reference model config.json (hash {'d' * 12}, this run {'c' * 12})")
    assert dependency_mismatch({**current, "max_length": 512}, current) == (
        "precomputed with max_length=512, this run uses 1024")


# --------------------------------------------------------------------------------------------------------------------
# LION's rm_importance selection and wis weights (chatalign.train.dpo.importance)


def test_rm_importance_probability_is_the_bimodal_target_over_the_bin_count():
    weights = np.array([0.1, 0.3, 0.3, 0.3, 0.75, 0.9, 1.0])
    counts, edges = np.histogram(weights, bins=25)
    expected = []
    for w in weights:
        b = min(int(np.searchsorted(edges, w, side="right")) - 1, 24)  # [e_k, e_k+1), the last bin closed
        density = sum(math.exp(-0.5 * ((w - m) / 0.1) ** 2) / (0.1 * math.sqrt(2 * math.pi)) for m in (0.3, 0.75))
        expected.append(density / counts[b])
    expected = np.array(expected) / sum(expected)
    assert np.allclose(rm_importance_probabilities(weights), expected, rtol=1e-12)
    # the three pairs at 0.3 share their bin, so each gets a third of what a lone pair at 0.3 would
    assert rm_importance_probabilities(weights)[1] == pytest.approx(expected[1])


def test_rm_importance_select_keeps_weights_from_0_1_and_reshapes_them_bimodally():
    weights = seeded_rng(0, "test").uniform(0.0, 1.0, 4000)
    indices, counts = rm_importance_select(weights, 600, seed=3)
    assert len(indices) == 600 == counts["selected"] and len(set(indices.tolist())) == 600
    assert (weights[indices] >= 0.1).all() and counts["excluded: weight < 0.1"] == int((weights < 0.1).sum())
    near = lambda w: ((np.abs(w - 0.3) < 0.1) | (np.abs(w - 0.75) < 0.1)).mean()  # noqa: E731
    assert near(weights[indices]) > near(weights[weights >= 0.1]) + 0.2  # uniform in, mass at the two modes out
    again, _ = rm_importance_select(weights, 600, seed=3)
    other, _ = rm_importance_select(weights, 600, seed=4)
    assert np.array_equal(indices, again) and not np.array_equal(indices, other)
    # LION's default max_data_size=-1 crashed; unset here means every kept pair
    everything, counts = rm_importance_select(weights, None, seed=3)
    assert np.array_equal(everything, np.flatnonzero(weights >= 0.1)) and counts["selected"] == len(everything)
    with pytest.raises(ValueError, match="no pair has weight >= 0.1"):
        rm_importance_select(np.array([0.05, 0.01]), 1, seed=0)


def lm_reward_file(path, rows, weights):
    keys = [pair_id(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    return write_jsonl(path, [{"pair_id": k, "weight": w, "dropped": w is None}
                              for k, w in zip(keys, weights, strict=True)])


def test_run_dpo_rm_importance_selection_from_a_weight_file(run_dpo, tiny_model_dir, tmp_path):
    rows = preference_rows(12)
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    weights = [0.05, 0.3, 0.32, 0.7, 0.75, 0.8, 0.28, 0.02, 0.5, 0.9, 0.31, None]  # the last one dropped when scored
    weight_file = lm_reward_file(tmp_path / "lm_rewards.jsonl", rows, weights)
    trainer = run_dpo.main(cli(tiny_model_dir, data, tmp_path / "out", rm_importance_file=weight_file,
                               max_data_size=6, max_steps=1))
    results = json.loads((tmp_path / "out" / "train_results.json").read_text())
    selection = results["data"]["train"]["selection"]
    assert selection["sampling"] == "rm_importance" and selection["file"] == str(weight_file)
    assert selection["eligible"] == 9 and selection["selected"] == 6 == len(trainer.train_dataset)
    assert selection["excluded: unscored (prompt fills max_length)"] == 1 and selection["excluded: weight < 0.1"] == 2
    kept = {r["prompt_id"] for r, w in zip(rows, weights, strict=True) if w is not None and w >= 0.1}
    assert set(trainer.train_dataset["prompt_id"]) <= kept
    assert math.isfinite(trainer.state.log_history[0]["loss"])

    partial = write_jsonl(tmp_path / "partial.jsonl", [json.loads(x) for x in weight_file.read_text().split("\n")[:5]
                                                       if x])
    with pytest.raises(ValueError, match=r"rm_importance file .*partial.jsonl has no entry for 7 of the 12 training "
                                         r"pairs, first row \d+ \(source .*prompt_id 'p([5-9]|1[01])'\): compute it"):
        run_dpo.main(cli(tiny_model_dir, data, tmp_path / "out2", rm_importance_file=partial, max_data_size=6))


@pytest.mark.parametrize("overrides, message", [
    ({"rm_importance_file": "missing.jsonl"}, r"rm_importance_file missing.jsonl does not exist \(written by "
                                              r"scripts/compute_lm_reward.py\)"),
    ({"wis_importance_file": "nowhere.jsonl"}, r"wis_importance_file nowhere.jsonl does not exist"),
    ({"wis_importance_file": "W", "loss_type": "aot"}, r"wis_importance_file cannot weight loss_type 'aot'"),
    ({"wis_importance_file": "W", "wis_gamma": "0"}, r"wis_gamma must be a positive number"),
    ({"rm_importance_file": "W", "preference_config": "{-100: 1.0}", "max_data_size": "4"},
     "rm_importance_file and preference_config are two ways of selecting pairs"),
])
def test_importance_config_errors_before_loading(overrides, message, tmp_path):
    weight_file = tmp_path / "w.jsonl"
    weight_file.write_text('{"pair_id": "x", "weight": 0.5}\n')
    overrides = {k: (str(weight_file) if v == "W" else v) for k, v in overrides.items()}
    _, data_args, training_args, script_args = parse(
        ["--model_name_or_path=m", f"--output_dir={tmp_path}", "--use_cpu=true", "--activation_checkpointing=false"]
        + [f"--{k}={v}" for k, v in overrides.items()])
    with pytest.raises(ConfigError, match=message):
        check_dpo_arguments(training_args, data_args, script_args)
        check_input_files(script_args)


def test_pair_value_files_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"pair_id": "a", "weight": 0.2}\n{"pair_id": "b", "weight": "high"}\n')
    with pytest.raises(ValueError, match=r"rm_importance file .*bad.jsonl, line 2 \(pair_id b\), field 'weight': a "
                                         r"finite number is needed, got 'high'"):
        read_pair_values(bad, ("weight",), "rm_importance")
    bad.write_text('{"weight": 0.2}\n')
    with pytest.raises(ValueError, match=r"line 1: no pair_id"):
        read_pair_values(bad, ("weight",), "rm_importance")


def test_wis_weight_is_lions_formula_and_detached():
    pc = torch.tensor([-10.0, -3.0], requires_grad=True)
    pr = torch.tensor([-12.0, -1.0], requires_grad=True)
    mc, mr = torch.tensor([-20.0, -3.0]), torch.tensor([-15.0, -9.0])
    weight = wis_weight(pc, pr, mc, mr, gamma=0.01)
    expected = [1 / (1 + math.exp(-0.01 * ((-10 + 20) + (-12 + 15)))) + 1e-6,
                1 / (1 + math.exp(-0.01 * ((-3 + 3) + (-1 + 9)))) + 1e-6]
    assert weight.tolist() == pytest.approx(expected, abs=1e-7) and not weight.requires_grad


def test_wis_trainer_multiplies_each_pairs_loss_by_its_weight(models, tmp_path):
    policy, ref, tokenizer = models
    trainer = ChatalignDPOTrainer(model=policy, ref_model=ref, args=dpo_config(tmp_path, beta=0.1),
                                  train_dataset=Dataset.from_list(preference_rows(2, scores=False)),
                                  processing_class=tokenizer, wis_gamma=0.5)
    rows = [trainer.train_dataset[i] for i in range(2)]
    mu = [(-30.0, -20.0), (-5.0, -40.0)]
    batch = trainer.data_collator([{**r, MU_COLUMNS[0]: c, MU_COLUMNS[1]: j} for r, (c, j) in zip(rows, mu,
                                                                                                 strict=True)])
    policy_chosen, policy_rejected = trainer.compute_ref_log_probs(policy, batch)
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(ref, batch)
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    expected = 0.0
    for k in range(2):
        wis = 1 / (1 + math.exp(-0.5 * ((policy_chosen[k].item() - mu[k][0]) + (policy_rejected[k].item()
                                                                                 - mu[k][1])))) + 1e-6
        expected += wis * -math.log(1 / (1 + math.exp(-0.1 * margin[k].item())))
    with torch.no_grad():
        loss = trainer.compute_loss(policy, batch).item()
    assert loss == pytest.approx(expected / 2, abs=1e-6)
    logged = trainer._metrics["train"]["wis/weight"] + trainer._metrics["eval"]["wis/weight"]
    assert len(logged) == 1 and 0 < logged[0] < 1
    with pytest.raises(ValueError, match="wis_gamma is set but the batch has no generator log-probs"):
        trainer.compute_loss(policy, trainer.data_collator(rows))


def test_several_processes_read_the_reference_cache_that_precompute_wrote(precompute, tiny_model_dir, pref_file,
                                                                            tmp_path):
    """precompute_ref_logprobs.py with no file named fills the cache run_dpo reads; a 2-process run_dpo (one rank
    alone cannot run a ZeRO-3 reference, so several processes only read) finds it complete and loads no reference."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    cache = tmp_path / "cache"
    common = dict(max_data_size=8, ref_logps_cache_dir=cache, max_steps=1)
    precompute.main(cli(tiny_model_dir, pref_file, tmp_path / "pre", precompute_ref_batch_size=8, **common))
    (cached,) = (cache / "ref_logps").glob("*.parquet")
    assert len(read_ref_logps_file(cached)) == 8
    argv = cli(tiny_model_dir, pref_file, tmp_path / "dpo", precompute_ref_log_probs="true", ddp_backend="gloo",
               **common)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29537",
                           str(REPO / "scripts" / "run_dpo.py"), *argv], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"reference log-probs from {cached} (8 pairs): no reference model is loaded" in proc.stdout
    assert "TRL's in-run pass" not in proc.stdout
    state = json.loads((tmp_path / "dpo" / "trainer_state.json").read_text())
    assert (state["global_step"], state["epoch"]) == (1, 0.5)  # 2 processes x 2 pairs of 8: half an epoch per step


def test_a_reference_cache_is_complete_only_with_every_pair(precomputed, tmp_path):
    from chatalign.train.dpo.reference import complete_ref_cache, ref_cache_path

    path, _ = precomputed
    data = read_ref_logps_file(path)
    dependencies = data.meta["dependencies"]
    assert complete_ref_cache(dependencies, [], tmp_path) is None  # no file
    target = ref_cache_path(dependencies, tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(path.read_bytes())
    pairs = Dataset.from_list(preference_rows(12, scores=False))
    known = pairs.filter(lambda r: pair_id(r["prompt"], r["chosen"], r["rejected"]) in data.logps)
    assert 0 < len(known) < len(pairs)
    assert complete_ref_cache(dependencies, [known], tmp_path) == target
    assert complete_ref_cache(dependencies, [pairs], tmp_path) is None  # some pair missing: TRL's pass instead


def test_reference_logps_are_cached_by_their_dependencies_and_reused(run_dpo, precomputed, tmp_path, monkeypatch,
                                                                      caplog):
    """precompute_ref_log_probs with no file named: the first run computes the reference log-probs into a cache keyed
    by what they depend on, a second run (another output_dir, more steps) loads them and computes nothing."""
    import chatalign.train.dpo.reference as reference

    path, argv = precomputed
    pairs = len(read_ref_logps_file(path))
    argv = [a for a in argv if not a.startswith(("--output_dir", "--precompute_file_path"))]
    argv += ["--precompute_ref_log_probs=true", f"--ref_logps_cache_dir={tmp_path / 'cache'}", "--max_steps=2"]
    first = run_dpo.main([*argv, f"--output_dir={tmp_path / 'first'}"])
    cached = list((tmp_path / "cache" / "ref_logps").glob("*.parquet"))
    assert len(cached) == 1 and read_ref_logps_file(cached[0]).logps == read_ref_logps_file(path).logps
    assert first.ref_model is None
    with monkeypatch.context() as patch, caplog.at_level("INFO"):
        patch.setattr(reference, "compute_ref_logps", lambda *a, **k: pytest.fail("recomputed"))
        second = run_dpo.main([*argv, f"--output_dir={tmp_path / 'second'}"])
    assert f"reference log-probs of all {pairs} pairs loaded from {cached[0]}" in caplog.text
    assert [h.get("loss") for h in first.state.log_history] == [h.get("loss") for h in second.state.log_history]
    # Another max_length is another dependency: another cache file, computed afresh.
    run_dpo.main([*argv, "--max_length=48", f"--output_dir={tmp_path / 'third'}"])
    assert len(list((tmp_path / "cache" / "ref_logps").glob("*.parquet"))) == 2
