"""chatalign.train.padding_free and the padding-free paths of ChatalignDPOTrainer / ChatalignKTOTrainer: the collators
flatten exactly the tokens TRL's padded collators keep, the log-probs gathered back from the flattened forward are
the padded forward's, and so are the loss, its gradients and the metrics (online, precomputed and PEFT references,
per-pair weights, wis, LD-DPO, WPO, truncation, KTO's KL completions, nnPU), under sdpa and chatalign_varlen; and
one training step of run_dpo / run_kto with padding_free true equals the padded run's."""

import gc
import importlib.util
import json
import logging
import math

import pytest
import torch
from conftest import load_script
from datasets import Dataset
from helpers.preference import preference_rows, unpaired_rows
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, KTOConfig
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

from chatalign.train.dpo.importance import MU_COLUMNS
from chatalign.train.dpo.reference import REF_COLUMNS
from chatalign.train.dpo.selection import PAIR_WEIGHT
from chatalign.train.dpo.trainer import ChatalignDPOTrainer
from chatalign.train.kto import ChatalignKTOTrainer, NNPUKTOTrainer
from chatalign.train.padding_free import (
    PaddingFreePreferenceCollator,
    PaddingFreeUnpairedCollator,
    flat_labels,
    padded_layout,
    to_padded,
)


@pytest.fixture(autouse=True, scope="module")
def _cheap_gc():
    """As in test_dpo: accelerate's gc.collect() at every train() start and end is slow with torch's import objects."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


ATTENTION = ["sdpa", "chatalign_varlen"]
# What load_model picks for padding-free training without flash-attn; the variants of the loss run under it.
TRAINING_ATTENTION = "chatalign_varlen" if importlib.util.find_spec("chatalign.train.varlen") else "sdpa"


@pytest.fixture(scope="module")
def models(request, tiny_model_dir):
    """(policy nudged away from its reference, reference, tokenizer) under one attention implementation. Padded
    batches carry an attention mask, which chatalign_varlen hands to sdpa unchanged, so the padded path is sdpa's."""
    attention = getattr(request, "param", TRAINING_ATTENTION)
    if attention == "chatalign_varlen":
        pytest.importorskip("chatalign.train.varlen")  # registers the implementation with transformers
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return policy, ref, tokenizer


# --------------------------------------------------------------------------------------------------------------------
# Collators and the gather back to the padded layout


def test_collator_rows_positions_boundaries_and_labels():
    examples = [{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
                {"prompt_ids": [7, 8], "chosen_ids": [9], "rejected_ids": [10, 11]}]
    out = PaddingFreePreferenceCollator()(examples)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5, 7, 8, 9, 1, 2, 3, 6, 7, 8, 10, 11]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3]]
    assert out["completion_mask"].tolist() == [[0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 1]]
    assert out["seq_lens"].tolist() == [5, 3, 4, 4]
    assert out["cu_seq_lens_q"].tolist() == out["cu_seq_lens_k"].tolist() == [0, 5, 8, 12, 16]
    assert out["cu_seq_lens_q"].dtype == torch.int32 and out["max_length_q"] == out["max_length_k"] == 5
    assert "attention_mask" not in out  # a mask would make flash / varlen attention ignore the position ids
    assert flat_labels(out).tolist() == [[-100, -100, -100, 4, 5, -100, -100, 9, -100, -100, -100, 6, -100, -100, 10,
                                          11]]
    # A completion token at a sequence start (its prompt cut away by keep_end) is no label: the position before it
    # belongs to another sequence, and the padded forward never scores a row's first token either.
    cut = PaddingFreePreferenceCollator(max_length=2, truncation_mode="keep_end")(examples)
    assert cut["input_ids"].tolist() == [[4, 5, 8, 9, 3, 6, 10, 11]]
    assert flat_labels(cut).tolist() == [[-100, 5, -100, 9, -100, 6, -100, 11]]


@pytest.mark.parametrize("max_length, truncation_mode", [(None, "keep_start"), (7, "keep_start"), (7, "keep_end")])
def test_preference_collator_keeps_the_padded_collators_tokens(max_length, truncation_mode):
    generator = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, 50, (n,), generator=generator).tolist()  # noqa: E731
    examples = [{"prompt_ids": ids(2 + 2 * i), "chosen_ids": ids(5 - i), "rejected_ids": ids(1 + 2 * i),
                 "ref_chosen_logps": -1.0 - i, "ref_rejected_logps": -2.0 - i} for i in range(3)]
    padded = DataCollatorForPreference(pad_token_id=0, max_length=max_length, truncation_mode=truncation_mode)(examples)
    flat = PaddingFreePreferenceCollator(max_length=max_length, truncation_mode=truncation_mode)(examples)
    layout = padded_layout(flat)
    assert set(layout) == {"input_ids", "attention_mask", "completion_mask", *REF_COLUMNS}
    for key in ("input_ids", "attention_mask", "completion_mask", *REF_COLUMNS):
        assert torch.equal(layout[key], padded[key]), key  # pad id 0 on both sides
    assert flat["input_ids"].size(1) == int(padded["attention_mask"].sum())


def test_unpaired_collator_keeps_the_padded_collators_tokens():
    examples = [{"prompt_ids": [1, 2, 3], "completion_ids": [4, 5, 6, 7], "KL_completion_ids": [8], "label": True,
                 "ref_logps": -1.5, "ref_KL_logps": -0.5},
                {"prompt_ids": [9], "completion_ids": [8], "KL_completion_ids": [4, 5, 6, 7], "label": False,
                 "ref_logps": -2.5, "ref_KL_logps": -3.5}]
    padded = DataCollatorForUnpairedPreference(pad_token_id=0, max_length=5)(examples)
    flat = PaddingFreeUnpairedCollator(max_length=5)(examples)
    assert flat["input_ids"].tolist() == [[1, 2, 3, 4, 5, 9, 8]] and flat["KL_input_ids"].tolist() == [[1, 2, 3, 8, 9,
                                                                                                         4, 5, 6, 7]]
    layout = padded_layout(flat, ("", "KL_"))
    assert set(layout) == set(padded)
    for key in padded:
        assert torch.equal(layout[key], padded[key]), key


def test_to_padded_puts_each_prediction_where_the_padded_forward_does():
    seq_lens = torch.tensor([3, 2, 4])  # flattened row of 9 tokens: 8 next-token predictions
    predictions = torch.arange(1.0, 9.0)[None]  # prediction k is of token k+1 of the row
    # Row i, position j: token j+1 of sequence i. Predictions 3 and 5 (of the next sequence's first token) drop.
    assert to_padded(predictions, seq_lens, width=3).tolist() == [[1, 2, 0], [4, 0, 0], [6, 7, 8]]
    tokens = torch.arange(10, 19)[None]
    assert to_padded(tokens, seq_lens, width=4, shifted=False).tolist() == [[10, 11, 12, 0], [13, 14, 0, 0],
                                                                            [15, 16, 17, 18]]
    hits = torch.ones(1, 8, dtype=torch.bool)
    assert to_padded(hits, seq_lens, width=3).tolist() == [[True, True, False], [True, False, False], [True] * 3]


# --------------------------------------------------------------------------------------------------------------------
# DPO: the padding-free path equals the padded one


def dpo_config(out, **kw):
    base = dict(output_dir=str(out), report_to="none", use_cpu=True, bf16=False, activation_checkpointing=False,
                per_device_train_batch_size=3, max_steps=1, save_strategy="no", disable_tqdm=True, max_length=64)
    return DPOConfig(**{**base, **kw})


def dpo_trainers(models, tmp_path, rows, trainer_kwargs=None, **config):
    policy, ref, tokenizer = models
    precomputed = REF_COLUMNS[0] in rows[0]
    trainers = [ChatalignDPOTrainer(model=policy, ref_model=None if precomputed else ref,
                                    args=dpo_config(tmp_path, padding_free=flat, precompute_ref_log_probs=precomputed,
                                                    **config),
                                    train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                    **(trainer_kwargs or {}))
                for flat in (False, True)]
    assert [t.padding_free for t in trainers] == [False, True]
    return trainers


def loss_and_grads(trainer, rows):
    model = trainer.model
    model.zero_grad()
    loss = trainer.compute_loss(model, trainer.data_collator(rows))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.item(), grads


def logged(trainer, key):
    """The one value of a metric the trainer logged (under "eval" unless the model is in training mode)."""
    values = trainer._metrics["train"][key] + trainer._metrics["eval"][key]
    assert len(values) == 1, key
    return values[0]


def assert_same_loss_and_grads(padded, flat, rows):
    (loss, grads), (flat_loss, flat_grads) = loss_and_grads(padded, rows), loss_and_grads(flat, rows)
    assert flat_loss == pytest.approx(loss, abs=1e-5) and loss != 0.0
    assert grads.keys() == flat_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        assert torch.allclose(flat_grads[name], grad, atol=1e-4, rtol=0), name
    metrics = {(mode, key): values for mode in ("train", "eval") for key, values in padded._metrics[mode].items()}
    assert len(metrics) >= 4  # TRL's metrics, computed on the layout gathered back from the flattened row
    for (mode, key), values in metrics.items():
        assert flat._metrics[mode][key] == pytest.approx(values, abs=1e-4), key


DPO_VARIANTS = {
    "precomputed reference": ({"ref": True}, {}),
    "keep_start truncation": ({}, {"max_length": 36}),
    "keep_end truncation": ({}, {"max_length": 36, "truncation_mode": "keep_end"}),
    "LD-DPO": ({}, {"ld_alpha": 0.5}),
    "WPO": ({}, {"use_weighting": True}),
    "ipo": ({}, {"loss_type": ["ipo"]}),
    "aot and sft (TRL's own loss)": ({}, {"loss_type": ["aot", "sft"], "loss_weights": [1.0, 0.3],
                                          "label_smoothing": 0.1}),
    "rm_weight_column": ({"weights": [0.5, 2.0, 1.0]}, {}),
    "wis": ({"wis": True}, {}),
}


@pytest.mark.parametrize("models", ATTENTION, indirect=True)
def test_dpo_padding_free_equals_padded(models, tmp_path):
    check_dpo_variant(models, tmp_path, {}, {})


@pytest.mark.parametrize("variant", DPO_VARIANTS)
def test_dpo_variant_padding_free_equals_padded(variant, models, tmp_path):
    check_dpo_variant(models, tmp_path, *DPO_VARIANTS[variant])


def check_dpo_variant(models, tmp_path, setup, config):
    rows = preference_rows(3)
    if setup.get("ref"):
        rows = [{**r, REF_COLUMNS[0]: -30.0 - i, REF_COLUMNS[1]: -25.0 + i} for i, r in enumerate(rows)]
    trainer_kwargs = {"weighted": True} if "weights" in setup else {"wis_gamma": 0.5} if "wis" in setup else {}
    padded, flat = dpo_trainers(models, tmp_path, rows, trainer_kwargs, **config)
    assert isinstance(flat.data_collator, PaddingFreePreferenceCollator)
    batch_rows = [padded.train_dataset[i] for i in range(3)]
    if "weights" in setup:
        batch_rows = [{**r, PAIR_WEIGHT: w} for r, w in zip(batch_rows, setup["weights"], strict=True)]
    if "wis" in setup:
        batch_rows = [{**r, MU_COLUMNS[0]: -20.0 - 5 * i, MU_COLUMNS[1]: -35.0 + i} for i, r in enumerate(batch_rows)]
    # Sequence log-probs of the policy (chosen, rejected): TRL's reference pass, padded and flattened.
    padded_logps = padded.compute_ref_log_probs(padded.model, padded.data_collator(batch_rows))
    flat_logps = flat.compute_ref_log_probs(flat.model, flat.data_collator(batch_rows))
    for a, b in zip(padded_logps, flat_logps, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=0) and a.abs().min() > 1.0
    if config.get("max_length"):  # the same tokens are scored: truncation cut some completions
        full = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in batch_rows]
        assert max(full) > config["max_length"]
    assert_same_loss_and_grads(padded, flat, batch_rows)


@pytest.mark.parametrize("trainer_class", [ChatalignDPOTrainer, ChatalignKTOTrainer])
def test_trls_reference_pass_runs_padding_free(trainer_class, models, tmp_path, monkeypatch):
    policy, ref, tokenizer = models
    flat_batches, original = [], trainer_class.compute_ref_log_probs

    def spy(self, model, inputs):
        flat_batches.append("seq_lens" in inputs)
        return original(self, model, inputs)

    monkeypatch.setattr(trainer_class, "compute_ref_log_probs", spy)
    dpo = trainer_class is ChatalignDPOTrainer
    columns = REF_COLUMNS if dpo else ("ref_logps", "ref_KL_logps")
    computed = []
    for padding_free in (False, True):
        # A column naming the run: the datasets differ in fingerprint, so TRL's cache of the first pass is not reused.
        rows = [{**r, "run": str(padding_free)} for r in (preference_rows(4) if dpo else unpaired_rows(4))]
        config = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, max_length=64,
                      precompute_ref_log_probs=True, per_device_train_batch_size=4, disable_tqdm=True,
                      padding_free=padding_free)
        if dpo:
            trainer = trainer_class(model=policy, ref_model=ref, args=DPOConfig(**config),
                                    train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        else:
            config.pop("padding_free")
            trainer = trainer_class(model=policy, ref_model=ref, args=KTOConfig(**config), padding_free=padding_free,
                                    train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        computed.append([torch.tensor(trainer.train_dataset[c]) for c in columns])
    assert flat_batches == [False, True]  # one batch each: the padded pass, then the flattened one
    for a, b in zip(*computed, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=0) and a.abs().min() > 1.0


def test_dpo_padding_free_with_peft_reference_equals_padded(tiny_model_dir, tmp_path):
    from peft import LoraConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # init_lora_weights=False: B is random, so the policy differs from its adapter-disabled reference from the start.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    padded, flat = (ChatalignDPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                        args=dpo_config(tmp_path, padding_free=padding_free), peft_config=lora,
                                        train_dataset=Dataset.from_list(preference_rows(3)), processing_class=tokenizer)
                    for padding_free in (False, True))
    flat.model.load_state_dict(padded.model.state_dict())  # the same adapter weights
    assert padded.ref_model is None and flat.ref_model is None and flat.padding_free
    assert_same_loss_and_grads(padded, flat, [padded.train_dataset[i] for i in range(3)])
    assert abs(logged(flat, "rewards/margins")) > 1e-4  # the reference is not the policy


def test_trls_fallback_to_padding_is_intercepted(tiny_model_dir, tmp_path, caplog):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = dpo_config(tmp_path, padding_free=True)
    with caplog.at_level(logging.WARNING):
        trainer = ChatalignDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(preference_rows(2)),
                                      processing_class=tokenizer)
    assert "temporarily unavailable" not in caplog.text
    assert trainer.padding_free and args.padding_free  # the user's value, back where TRL had turned it off
    assert type(trainer.data_collator) is PaddingFreePreferenceCollator
    assert (trainer.data_collator.max_length, trainer.data_collator.truncation_mode) == (64, "keep_start")
    with pytest.raises(ValueError, match="a data_collator cannot be given with it"):
        ChatalignDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(preference_rows(2)),
                            processing_class=tokenizer, data_collator=PaddingFreePreferenceCollator())


# --------------------------------------------------------------------------------------------------------------------
# KTO: completions and KL completions


def kto_trainers(models, tmp_path, rows, trainer_class=ChatalignKTOTrainer, **config):
    policy, ref, tokenizer = models
    base = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, activation_checkpointing=False,
                per_device_train_batch_size=4, max_length=64, disable_tqdm=True)
    extra = {"prior": 0.3} if trainer_class is NNPUKTOTrainer else {}
    return [trainer_class(model=policy, ref_model=ref, args=KTOConfig(**{**base, **config}),
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer, padding_free=flat, **extra)
            for flat in (False, True)]


@pytest.mark.parametrize("models, config", [("sdpa", {}), (TRAINING_ATTENTION, {"max_length": 34})],
                         ids=["sdpa-whole", f"{TRAINING_ATTENTION}-truncated"], indirect=["models"])
def test_kto_padding_free_equals_padded(config, models, tmp_path):
    policy, ref, tokenizer = models
    # Roles swapped: the KL estimate on these rows is then above 0, so the clamped KL term is live in the loss.
    padded, flat = kto_trainers((ref, policy, tokenizer), tmp_path, unpaired_rows(4), **config)
    assert isinstance(flat.data_collator, PaddingFreeUnpairedCollator) and flat.calculate_KL
    rows = [padded.train_dataset[i] for i in range(4)]
    assert all(r["KL_completion_ids"] != r["completion_ids"] for r in rows)  # mismatched prompt/completion pairs
    # The completions' and the KL completions' log-probs under the policy.
    padded_logps = padded.compute_ref_log_probs(padded.model, padded.data_collator(rows))
    flat_logps = flat.compute_ref_log_probs(flat.model, flat.data_collator(rows))
    for a, b in zip(padded_logps, flat_logps, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=0) and a.abs().min() > 1.0
    assert_same_loss_and_grads(padded, flat, rows)
    assert logged(flat, "kl") > 0  # the KL term is live: the policy is away from the reference


def test_nnpu_kto_padding_free_equals_padded(models, tmp_path):
    rows = unpaired_rows(4)
    for i, row in enumerate(rows):  # (real, generated) pairs of one prompt
        row.update(label=i % 2 == 0, prompt=rows[i - i % 2]["prompt"], prompt_id=f"q{i // 2}")
    padded, flat = kto_trainers(models, tmp_path, rows, NNPUKTOTrainer)
    assert "KL_completion_ids" not in flat.train_dataset.column_names
    assert_same_loss_and_grads(padded, flat, [padded.train_dataset[i] for i in range(4)])


# --------------------------------------------------------------------------------------------------------------------
# One training step end to end


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli(model_dir, data, out, **overrides):
    args = {
        "model_name_or_path": str(model_dir), "dataset_mixer": f"{{{data}: 1.0}}", "dataset_splits": "train",
        "bf16": "false", "use_cpu": "true", "activation_checkpointing": "false", "max_length": 48,
        "per_device_train_batch_size": 4, "max_steps": 1, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "learning_rate": 1e-2, "disable_tqdm": "true", "output_dir": str(out), "seed": 0,
    }  # fmt: skip
    args.update(overrides)
    return [f"--{k}={v}" for k, v in args.items()]


def first_step(trainer):
    log = trainer.state.log_history[0]
    assert math.isfinite(log["loss"]) and trainer.state.global_step == 1
    return log


@pytest.mark.parametrize("script, rows", [("run_dpo", lambda: preference_rows(8, scores=True)),
                                          ("run_kto", lambda: unpaired_rows(8))], ids=["dpo", "kto"])
def test_one_padding_free_step_equals_the_padded_step(script, rows, tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", rows())
    main = load_script(script).main
    padded = first_step(main(cli(tiny_model_dir, data, tmp_path / "padded")))
    trainer = main(cli(tiny_model_dir, data, tmp_path / "flat", padding_free="true"))
    flat = first_step(trainer)
    # run_kto passes its padding_free key (KTOScriptArguments; KTOConfig has none) to the trainer and load_model.
    assert trainer.padding_free, f"{script} did not train padding-free"
    assert isinstance(trainer.data_collator, (PaddingFreePreferenceCollator, PaddingFreeUnpairedCollator))
    assert flat["loss"] == pytest.approx(padded["loss"], abs=1e-5)
    assert flat["grad_norm"] == pytest.approx(padded["grad_norm"], rel=1e-4)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(initial.lm_head.weight, trainer.model.lm_head.weight)  # parameters changed
