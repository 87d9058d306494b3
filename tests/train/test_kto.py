"""run_kto and chatalign.train.kto: the nnPU-KTO loss against hand-computed values, pair ordering, prompt truncation, the
self-play recipe, and end-to-end runs on the tiny model (standard KTO on unpaired and paired data, nnPU-KTO)."""

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, load_script
from datasets import Dataset
from helpers.checkpoints import state_dict

from chatalign.train.kto import (
    KTOScriptArguments,
    check_kto_arguments,
    nnpu_kto_loss,
    pair_real_generated,
    truncate_prompt_ids,
)

RECIPE = REPO / "recipes" / "mistral-7b" / "kto" / "config_selfplay_iter0.yaml"


def sig(x):
    return 1 / (1 + math.exp(-x))


def dsig(x):
    return sig(x) * (1 - sig(x))


def mean(xs):
    return sum(xs) / len(xs)


def expected(r_real, r_gen, beta, prior, detach_kl=True):
    """Plain-math risks, loss, branch and gradients of the nnPU-KTO loss, the KL baselines constant (detach_kl) or
    functions of the batch, as in the seed: KL_real = max(mean(r_real), 0), KL_gen = max(mean(r_gen), 0)."""
    kl_real, kl_gen = max(mean(r_real), 0.0), max(mean(r_gen), 0.0)
    p_pos = prior * mean([1 - sig(beta * (r - kl_gen)) for r in r_real])
    p_neg = prior * mean([1 - sig(beta * (kl_gen - r)) for r in r_real])
    u_neg = mean([1 - sig(beta * (kl_real - r)) for r in r_gen])
    defit = u_neg - p_neg < 0
    loss = p_neg - u_neg if defit else p_pos + u_neg - p_neg
    # d/dr of 1 - sig(beta (r - k)) is -beta sig'; of 1 - sig(beta (k - r)) is +beta sig' (sig' is even).
    n, m = len(r_real), len(r_gen)
    d_p_pos = [-prior * beta * dsig(beta * (r - kl_gen)) / n for r in r_real]
    d_p_neg = [prior * beta * dsig(beta * (kl_gen - r)) / n for r in r_real]
    d_u_neg = [beta * dsig(beta * (kl_real - r)) / m for r in r_gen]
    if not detach_kl:
        # Through the baselines: KL_gen moves every real term, KL_real every generated one; each mean has slope 1/n
        # (1/m) while above 0 and none once clamped. d/dk of 1 - sig(beta (r - k)) is +beta sig'; of
        # 1 - sig(beta (k - r)) is -beta sig'; of 1 - sig(beta (k - g)) is -beta sig'.
        dk_gen = (1 / m) if mean(r_gen) > 0 else 0.0
        dk_real = (1 / n) if mean(r_real) > 0 else 0.0
        via_p_pos = prior * mean([beta * dsig(beta * (r - kl_gen)) for r in r_real]) * dk_gen
        via_p_neg = -prior * mean([beta * dsig(beta * (kl_gen - r)) for r in r_real]) * dk_gen
        via_u_neg = -mean([beta * dsig(beta * (kl_real - g)) for g in r_gen]) * dk_real
        d_p_pos_gen, d_p_neg_gen, d_u_neg_real = [via_p_pos] * m, [via_p_neg] * m, [via_u_neg] * n
    else:
        d_p_pos_gen = d_p_neg_gen = [0.0] * m
        d_u_neg_real = [0.0] * n
    if defit:  # loss = P- - U-
        grad_real = [a - b for a, b in zip(d_p_neg, d_u_neg_real, strict=True)]
        grad_gen = [a - b for a, b in zip(d_p_neg_gen, d_u_neg, strict=True)]
    else:  # loss = P+ + U- - P-
        grad_real = [a + c - b for a, b, c in zip(d_p_pos, d_p_neg, d_u_neg_real, strict=True)]
        grad_gen = [a + c - b for a, b, c in zip(d_p_pos_gen, d_p_neg_gen, d_u_neg, strict=True)]
    return dict(kl_real=kl_real, kl_gen=kl_gen, p_pos=p_pos, p_neg=p_neg, u_neg=u_neg, defit=defit, loss=loss,
                grad_real=grad_real, grad_gen=grad_gen)


# Normal branch: generations score above the real answers (U- large, P- small); both KL baselines positive.
NORMAL = ([1.0, 0.2], [2.0, 3.0], 1.0, 0.1)


# Defit branch: real answers far above the generations, large prior: U- - P- < 0; both KL baselines positive.
DEFIT = ([4.0, 6.0], [1.0, 2.0], 1.0, 0.5)


@pytest.mark.parametrize("case, branch", [(NORMAL, 0.0), (DEFIT, 1.0)])
def test_nnpu_loss_and_branch_match_hand_computation(case, branch):
    r_real, r_gen, beta, prior = case
    want = expected(*case)
    assert want["kl_real"] > 0 and want["kl_gen"] > 0  # so a KL that leaked gradient would show below
    loss, metrics = nnpu_kto_loss(torch.tensor(r_real, dtype=torch.float64), torch.tensor(r_gen, dtype=torch.float64),
                                  beta, prior)
    assert metrics["defit"].item() == branch == float(want["defit"])
    assert loss.item() == pytest.approx(want["loss"], abs=1e-12)
    assert metrics["kl_real"].item() == pytest.approx(want["kl_real"])
    assert metrics["kl_gen"].item() == pytest.approx(want["kl_gen"])
    assert metrics["positive_risk"].item() == pytest.approx(want["p_pos"], abs=1e-12)
    assert metrics["negative_risk"].item() == pytest.approx(want["u_neg"] - want["p_neg"], abs=1e-12)


def test_nnpu_loss_hand_values_of_the_normal_case():
    # The same numbers written out once: KL_real = 0.6, KL_gen = 2.5.
    p_pos = 0.1 * ((1 - sig(1.0 - 2.5)) + (1 - sig(0.2 - 2.5))) / 2
    p_neg = 0.1 * ((1 - sig(2.5 - 1.0)) + (1 - sig(2.5 - 0.2))) / 2
    u_neg = ((1 - sig(0.6 - 2.0)) + (1 - sig(0.6 - 3.0))) / 2
    loss, _ = nnpu_kto_loss(torch.tensor([1.0, 0.2]), torch.tensor([2.0, 3.0]), 1.0, 0.1)
    assert loss.item() == pytest.approx(p_pos + u_neg - p_neg, abs=1e-6)
    assert loss.item() == pytest.approx(0.08633 + 0.85951 - 0.01368, abs=1e-4)


# Normal branch with the real answers' mean below 0: KL_real is clamped to 0 and passes no gradient.
CLAMPED = ([-1.0, 0.4], [2.0, 3.0], 1.0, 0.1)


@pytest.mark.parametrize("case", [NORMAL, DEFIT, CLAMPED], ids=["normal", "defit", "clamped"])
@pytest.mark.parametrize("detach_kl", [False, True], ids=["seed", "detached"])
def test_nnpu_gradients_match_hand_computation(case, detach_kl):
    r_real, r_gen, beta, prior = case
    want = expected(*case, detach_kl=detach_kl)
    real = torch.tensor(r_real, dtype=torch.float64, requires_grad=True)
    gen = torch.tensor(r_gen, dtype=torch.float64, requires_grad=True)
    loss, metrics = nnpu_kto_loss(real, gen, beta, prior, detach_kl=detach_kl)
    assert loss.item() == pytest.approx(want["loss"], abs=1e-12)
    grad_real, grad_gen = torch.autograd.grad(loss, (real, gen))
    assert grad_real.tolist() == pytest.approx(want["grad_real"], abs=1e-12)
    assert grad_gen.tolist() == pytest.approx(want["grad_gen"], abs=1e-12)
    assert not metrics["kl_real"].requires_grad and not metrics["kl_gen"].requires_grad


def test_seed_and_detached_kl_give_different_gradients():
    real = torch.tensor(NORMAL[0], dtype=torch.float64, requires_grad=True)
    gen = torch.tensor(NORMAL[1], dtype=torch.float64, requires_grad=True)
    seed = torch.autograd.grad(nnpu_kto_loss(real, gen, 1.0, 0.1)[0], (real, gen))
    detached = torch.autograd.grad(nnpu_kto_loss(real, gen, 1.0, 0.1, detach_kl=True)[0], (real, gen))
    assert not torch.allclose(seed[1], detached[1])  # the seed's KL_gen carries gradient into the generations


def test_nnpu_loss_needs_both_groups_and_a_proper_prior():
    with pytest.raises(ValueError, match="0 real and 2 generated"):
        nnpu_kto_loss(torch.tensor([]), torch.tensor([1.0, 2.0]), 0.1, 0.1)
    with pytest.raises(ValueError, match="prior"):
        nnpu_kto_loss(torch.tensor([1.0]), torch.tensor([1.0]), 0.1, 1.0)


def unpaired(prompt, text, label, prompt_id=None):
    row = {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": text}],
           "label": label}
    return row if prompt_id is None else {**row, "prompt_id": prompt_id}


def test_pair_real_generated_orders_whole_pairs_in_seeded_order():
    rows = [unpaired("a", "gen a", False), unpaired("b", "real b", True), unpaired("a", "real a", True),
            unpaired("c", "real c", True),  # no generation: dropped
            unpaired("b", "gen b", False), unpaired("d", "real d", True), unpaired("d", "gen d", False),
            unpaired("b", "gen b2", False)]  # second generation of b, no second real: dropped
    ds = Dataset.from_list(rows)
    out, counts = pair_real_generated(ds, seed=3)
    assert counts == {"pairs": 3, "dropped: real without a generated partner": 1,
                      "dropped: generated without a real partner": 1}
    assert out["label"] == [True, False] * 3
    texts = [r[0]["content"] for r in out["completion"]]
    assert sorted(zip(texts[::2], texts[1::2], strict=True)) == [("real a", "gen a"), ("real b", "gen b"), ("real d", "gen d")]
    assert pair_real_generated(ds, seed=3)[0]["completion"] == out["completion"]  # deterministic
    orders = {tuple(r[0]["content"] for r in pair_real_generated(ds, seed=s)[0]["completion"]) for s in range(8)}
    assert len(orders) > 1  # the seed decides the pair order


def test_pair_real_generated_prefers_prompt_id_and_fails_without_pairs():
    ds = Dataset.from_list([unpaired("same text", "r1", True, "p1"), unpaired("same text", "g2", False, "p2"),
                            unpaired("same text", "g1", False, "p1")])
    out, counts = pair_real_generated(ds, seed=0)
    assert [r[0]["content"] for r in out["completion"]] == ["r1", "g1"]
    assert counts["dropped: generated without a real partner"] == 1
    with pytest.raises(ValueError, match="no prompt has both"):
        pair_real_generated(Dataset.from_list([unpaired("x", "r", True)]), seed=0)


def test_truncate_prompt_ids_keeps_the_end_only_when_too_long():
    prompt = [1, 10, 11, 12, 13, 14, 15]  # 1 = BOS
    assert truncate_prompt_ids(prompt, 3, max_length=10, max_prompt_length=4) == prompt  # 7 + 3 fits
    assert truncate_prompt_ids(prompt, 4, max_length=10, max_prompt_length=4) == [12, 13, 14, 15]
    assert truncate_prompt_ids(prompt, 4, max_length=10, max_prompt_length=4, bos_token_id=1) == [1, 13, 14, 15]
    assert truncate_prompt_ids(prompt, 50, max_length=10, max_prompt_length=7) == prompt  # already short enough
    assert truncate_prompt_ids(prompt, 50, max_length=10, max_prompt_length=None) == prompt


def test_without_max_prompt_length_rows_are_exactly_trls(tmp_path, tiny_model_dir, data_dir):
    # ChatalignKTOTrainer redoes TRL's drop and KL-rotation steps (private _prepare_dataset): a TRL change shows here.
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOTrainer

    from chatalign.data.mixer import mix_datasets
    from chatalign.train.kto import ChatalignKTOTrainer

    rows = mix_datasets({str(data_dir / "llama_factory_demo" / "kto_en_demo.json"): {"size": 24}}, "unpaired",
                        splits=["train"], seed=1).train
    args, _ = kto_args(tmp_path, max_length=160, report_to="none")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepared = []
    for trainer_class in (KTOTrainer, ChatalignKTOTrainer):
        model, ref = (AutoModelForCausalLM.from_pretrained(tiny_model_dir) for _ in range(2))
        trainer = trainer_class(model=model, ref_model=ref, args=args, train_dataset=rows, processing_class=tokenizer)
        prepared.append(trainer.train_dataset)
    ours = trainer.data_counts["train"]
    assert 0 < ours["dropped: prompt fills max_length"] < 24 and len(prepared[1]) == 24 - ours[
        "dropped: prompt fills max_length"]
    for column in ("prompt_ids", "completion_ids", "KL_completion_ids", "label"):
        assert prepared[0][column] == prepared[1][column], column


def kto_args(tmp_path, **overrides):
    from trl import KTOConfig

    from chatalign.data.arguments import DataArguments

    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, activation_checkpointing=False,
                per_device_train_batch_size=4, per_device_eval_batch_size=2, max_length=128)
    data_keys = {"resample_each_epoch"}
    training = KTOConfig(**{**base, **{k: v for k, v in overrides.items() if k not in data_keys}})
    return training, DataArguments(**{k: v for k, v in overrides.items() if k in data_keys})


def test_check_kto_arguments_rejects_what_cannot_work(tmp_path):
    nnpu = KTOScriptArguments(kto_variant="nnpu")
    check_kto_arguments(nnpu, *kto_args(tmp_path))
    with pytest.raises(ValueError, match="even per_device_train_batch_size"):
        check_kto_arguments(nnpu, *kto_args(tmp_path, per_device_train_batch_size=3))
    with pytest.raises(ValueError, match="loss_type must stay 'kto'"):
        check_kto_arguments(nnpu, *kto_args(tmp_path, loss_type="apo_zero_unpaired"))
    with pytest.raises(ValueError, match="max_prompt_length \\(128\\) must be smaller than max_length \\(128\\)"):
        check_kto_arguments(KTOScriptArguments(max_prompt_length=128), *kto_args(tmp_path))
    with pytest.raises(ValueError, match="resample_each_epoch"):
        check_kto_arguments(KTOScriptArguments(), *kto_args(tmp_path, resample_each_epoch=True))
    with pytest.raises(ValueError, match="prior"):
        KTOScriptArguments(kto_variant="nnpu", prior=0.0)


def test_selfplay_recipe_parses_with_the_seed_settings():
    from chatalign.data.sampling import parse_mixer

    model, data, training, script = load_script("run_kto").make_parser().parse([str(RECIPE), "--use_cpu"])  # use_cpu: bf16 check on this machine
    assert (script.kto_variant, script.prior, script.max_prompt_length) == ("nnpu", 0.1, 1024)
    assert (training.optim.value, training.learning_rate, training.beta) == ("rmsprop", 5e-7, 0.1)
    assert (training.lr_scheduler_type.value, training.max_length) == ("linear", 2048)
    assert training.per_device_train_batch_size % 2 == 0 and training.bf16
    assert model.model_name_or_path == "mistralai/Mistral-7B-v0.1" and data.chat_template == "zephyr"
    assert [s.name for s in parse_mixer(data.dataset_mixer)] == ["generated/mistral-7b/iter0/kto"]
    check_kto_arguments(script, training, data)
    assert "scripts/run_kto.py" in RECIPE.read_text().split("\n\n")[0]  # the header says how to run it


def write_recipe(tmp_path, model_dir, mixer, output_dir, **extra):
    recipe = dict(model_name_or_path=str(model_dir), dataset_mixer=mixer, dataset_splits=["train"],
                  output_dir=str(output_dir), bf16=False, use_cpu=True, activation_checkpointing=False,
                  per_device_train_batch_size=4, max_steps=2, logging_steps=1, learning_rate=1e-3, max_length=128,
                  save_strategy="steps", save_steps=2, report_to="none", seed=7, dataset_num_proc=None)
    recipe.update(extra)
    path = tmp_path / f"{Path(output_dir).name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def check_trained(trainer, output_dir, model_dir, keys, in_some_step=()):
    history = trainer.state.log_history
    steps = [h for h in history if "loss" in h]
    assert len(steps) == trainer.state.global_step and all(math.isfinite(h["loss"]) for h in steps)
    for key in keys:
        assert all(key in h and math.isfinite(h[key]) for h in steps), key
    for key in in_some_step:  # KTO logs rewards/chosen only for batches that hold a chosen row
        assert any(key in h for h in steps) and all(math.isfinite(h[key]) for h in steps if key in h), key
    before, after = state_dict(model_dir), state_dict(output_dir)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # parameters changed
    live = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    assert all(torch.equal(live[k], after[k]) for k in after)  # the saved model reloads as trained
    assert (Path(output_dir) / "checkpoint-2" / "trainer_state.json").is_file()
    saved = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    assert all(key in saved[0] for key in keys) and len([h for h in saved if "loss" in h]) == len(steps)
    return steps


def test_run_kto_on_unpaired_kto_data(tmp_path, tiny_model_dir, data_dir):
    out = tmp_path / "kto"
    mixer = {str(data_dir / "llama_factory_demo" / "kto_en_demo.json"): {"size": 16}}
    recipe = write_recipe(tmp_path, tiny_model_dir, mixer, out, desirable_weight=1.5, undesirable_weight=0.5,
                          max_prompt_length=48)
    trainer = load_script("run_kto").main([recipe])
    assert (trainer.desirable_weight, trainer.undesirable_weight) == (1.5, 0.5)
    assert trainer.ref_model is not None and "KL_completion_ids" in trainer.train_dataset.column_names
    rows = zip(trainer.train_dataset["prompt_ids"], trainer.train_dataset["completion_ids"], strict=True)
    assert all(len(p) <= 48 or len(p) + len(c) <= 128 for p, c in rows)  # cut only where the row is too long
    assert trainer.data_counts["train"]["prompt truncated (max_prompt_length)"] > 0
    steps = check_trained(trainer, out, tiny_model_dir, ["kl"], ["rewards/chosen", "rewards/rejected"])
    assert steps[0]["kl"] == 0.0  # policy == reference at step 1
    results = json.loads((out / "train_results.json").read_text())
    assert sum(results["data"]["train"].values()) == 16


def test_run_kto_unpairs_preference_data(tmp_path, tiny_model_dir, data_dir):
    out = tmp_path / "dpo"
    pairs = tmp_path / "dpo_pairs.json"  # the first 8 pairs of the real DPO sample, in its own (LLaMA-Factory) format
    pairs.write_text(json.dumps(json.loads((data_dir / "llama_factory_demo" / "dpo_en_demo.json").read_text())[:8]))
    recipe = write_recipe(tmp_path, tiny_model_dir, {str(pairs): 1.0}, out, precompute_ref_log_probs=True,
                          max_prompt_length=64)
    trainer = load_script("run_kto").main([recipe])
    labels = trainer.train_dataset["label"]
    assert len(labels) == 16 and sum(labels) == 8  # 8 pairs -> 8 chosen (True) + 8 rejected (False) rows
    assert labels != [True, False] * 8  # shuffled: the two halves of a pair are not kept side by side
    assert trainer.ref_model is None and "ref_logps" in trainer.train_dataset.column_names
    check_trained(trainer, out, tiny_model_dir, ["kl"], ["rewards/chosen", "rewards/rejected"])


@pytest.fixture
def selfplay_dir(tmp_path, data_dir):
    """Self-play rows in the unpaired schema: the dataset's answer is real (True), a made-up one generated (False)."""
    rows = json.loads((data_dir / "llama_factory_demo" / "alpaca_en_demo.json").read_text())[:14]
    folder = tmp_path / "selfplay"
    folder.mkdir()
    for split, part in (("train", rows[:10]), ("test", rows[10:])):
        with open(folder / f"iter0_{split}.jsonl", "w") as f:
            for i, row in enumerate(part):
                prompt = (row["instruction"] + "\n" + row["input"]).strip()
                f.write(json.dumps(unpaired(prompt, row["output"][:300], True, f"{split}{i}")) + "\n")
                f.write(json.dumps(unpaired(prompt, "Well, " + row["instruction"][:80], False, f"{split}{i}")) + "\n")
    return folder


def test_run_kto_nnpu_samples_whole_pairs(tmp_path, tiny_model_dir, selfplay_dir):
    """A 0.6 fraction of 10 self-play pairs is 6 whole pairs: none left without its partner."""
    out = tmp_path / "nnpu_half"
    recipe = write_recipe(tmp_path, tiny_model_dir, {str(selfplay_dir): 0.6}, out, kto_variant="nnpu", prior=0.3,
                          max_steps=1, save_strategy="no")
    load_script("run_kto").main([recipe])
    data = json.loads((out / "train_results.json").read_text())["data"]["train"]
    assert data["pairs"] == 6 and not [k for k in data if "partner" in k]
    ids = (out / "train_data_ids.csv").read_text().splitlines()
    assert ids[0] == "prompt_id" and len(ids) == 13 and set(Counter(ids[1:]).values()) == {2}  # real + generated

def test_run_kto_nnpu_on_selfplay_pairs(tmp_path, tiny_model_dir, selfplay_dir):
    out = tmp_path / "nnpu"
    recipe = write_recipe(tmp_path, tiny_model_dir, {str(selfplay_dir): 1.0}, out, kto_variant="nnpu", prior=0.3,
                          dataset_splits=["train", "test"], eval_strategy="steps", eval_steps=2,
                          per_device_eval_batch_size=4)
    run_kto = load_script("run_kto")
    trainer = run_kto.main([recipe])
    ds = trainer.train_dataset
    assert ds["label"] == [True, False] * 10 and "KL_completion_ids" not in ds.column_names
    assert all(ds[i]["prompt_ids"] == ds[i + 1]["prompt_ids"] for i in range(0, 20, 2))
    keys = ["rewards/real", "rewards/generated", "rewards/margins", "kl/real", "kl/gen", "nnpu/defit"]
    steps = check_trained(trainer, out, tiny_model_dir, keys)
    # Step 1, policy == reference: every log-ratio is 0, so P+ = P- = prior/2, U- = 1/2, loss = U- = 0.5.
    assert steps[0]["loss"] == pytest.approx(0.5) and steps[0]["nnpu/defit"] == 0.0
    assert steps[0]["nnpu/positive_risk"] == pytest.approx(0.15) and steps[0]["rewards/margins"] == 0.0
    assert steps[1]["rewards/margins"] == pytest.approx(steps[1]["rewards/real"] - steps[1]["rewards/generated"])
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert evals and all(math.isfinite(h["eval_loss"]) and "eval_nnpu/defit" in h for h in evals)
    assert json.loads((out / "train_results.json").read_text())["data"]["train"]["pairs"] == 10

    batch = trainer.data_collator([ds[i] for i in (0, 2)])  # two real rows and no generated one
    with pytest.raises(ValueError, match="2 real and 0 generated rows; each batch needs both"):
        trainer.compute_loss(trainer.model, batch)

    # Resume from checkpoint-2 and train one more step.
    resumed = run_kto.main([recipe, "--max_steps=3", "--resume_from_checkpoint=true", "--eval_strategy=no"])
    assert resumed.state.global_step == 3
    assert [h["step"] for h in resumed.state.log_history if "loss" in h] == [1, 2, 3]
