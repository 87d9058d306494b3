"""run_rl and chatalign.train.rl: GRPO and RLOO runs on the tiny model with a function reward and a tiny reward model
combined with weights (what is logged, parameters changed, resume), the errors raised before anything loads, and
(slow) the embedded SmolLM2 recipe with each reward kind."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, build_tiny_classifier, load_script
from helpers.chat_stub import Stub
from helpers.checkpoints import state_dict

from chatalign.configs import ConfigError
from chatalign.train.rl import (
    RLScriptArguments,
    drop_long_prompts,
    judge_cache_files,
    prune_sampled_completions,
    requested_algorithm,
    resolve_generation_backend,
)

GSM8K = REPO / "data" / "tora_math_code" / "gsm8k_test_outputs.jsonl"
RECIPE = REPO / "recipes" / "smollm2-135m" / "rl" / "config_grpo_gsm8k.yaml"

REWARDS_MODULE = '''
def reference_length(prompts, completions, reference, **kwargs):
    """Rewards completions by length; fails unless every row's gold answer arrives as `reference`."""
    assert all(isinstance(r, str) and r for r in reference), reference
    return [len(c[0]["content"]) / 10.0 for c in completions]


def answer_value(prompts, completions, answer, **kwargs):
    """The row's own `answer` column (a recipe's reward_columns) as the reward."""
    return [float(a) for a in answer]
'''


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A `module:function` reward written to a file importable like a user's own module."""
    (tmp_path / "rl_test_rewards.py").write_text(REWARDS_MODULE)
    # sys.path itself, not syspath_prepend: that calls into pkg_resources, which another test may have stubbed.
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.delitem(sys.modules, "rl_test_rewards", raising=False)
    return "rl_test_rewards:reference_length"


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory, tiny_tokenizer):
    return build_tiny_classifier(tmp_path_factory.mktemp("rl_rm") / "tiny_rm", tiny_tokenizer, seed=5)


def write_recipe(tmp_path, model_dir, output_dir, rewards, **extra):
    recipe = dict(model_name_or_path=str(model_dir), dataset_mixer={str(GSM8K): {"size": 8, "split_map": {
                  "train": "test"}}}, dataset_splits=["train"], output_dir=str(output_dir), bf16=False,
                  use_cpu=True, activation_checkpointing=False, rewards=rewards, per_device_train_batch_size=4,
                  num_generations=2, max_completion_length=8, max_steps=3, logging_steps=1, learning_rate=1e-2,
                  beta=0.1, save_strategy="steps", save_steps=2, report_to="none", seed=7, sampled_completions=2)
    recipe.update(extra)
    path = tmp_path / f"{Path(output_dir).name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def logged_steps(trainer):
    return [h for h in trainer.state.log_history if "loss" in h]


def test_grpo_with_a_function_and_a_reward_model_logs_each_reward_and_resumes(tmp_path, tiny_model_dir, tiny_rm,
                                                                              reward_module):
    out = tmp_path / "grpo"
    rewards = [{"kind": "function", "spec": reward_module, "weight": 1.0},
               {"kind": "reward_model", "spec": str(tiny_rm), "weight": 0.5}]
    recipe = write_recipe(tmp_path, tiny_model_dir, out, rewards, system_prompt="Answer in \\boxed{}.")
    run_rl = load_script("run_rl")
    trainer = run_rl.main([recipe])
    assert type(trainer).__name__ == "ChatalignGRPOTrainer" and trainer.reward_weights.tolist() == [1.0, 0.5]
    assert trainer.reward_func_names == ["reference_length", "reward_model_tiny_rm"]
    steps = logged_steps(trainer)
    assert [h["step"] for h in steps] == [1, 2, 3]
    for h in steps:
        for key in ("rewards/reference_length/mean", "rewards/reference_length/std", "rewards/reward_model_tiny_rm/mean",
                    "rewards/reward_model_tiny_rm/std", "reward", "reward_std", "kl", "completions/mean_length"):
            assert math.isfinite(h[key]), key
        assert 0 < h["completions/mean_length"] <= 8
        # The logged reward is the weighted sum of the per-reward means (no reward gave None).
        assert h["reward"] == pytest.approx(h["rewards/reference_length/mean"] +
                                            0.5 * h["rewards/reward_model_tiny_rm/mean"], abs=1e-4)
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is the reference before its first update
    assert any(h["reward_std"] > 0 for h in steps)  # completions differ, so advantages are not all zero
    before, after = state_dict(tiny_model_dir), state_dict(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # parameters changed
    samples = [json.loads(line) for line in (out / "sampled_completions.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1, 1, 2, 2, 3, 3]
    assert all(set(s["rewards"]) == {"reference_length", "reward_model_tiny_rm"} and isinstance(s["completion"], str)
               and [m["role"] for m in s["prompt"]] == ["system", "user"] for s in samples)
    assert samples[0]["prompt"][0]["content"] == "Answer in \\boxed{}."
    assert samples[0]["rewards"]["reference_length"] == pytest.approx(len(samples[0]["completion"]) / 10.0)
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    ids = (out / "train_data_ids.csv").read_text().splitlines()
    assert ids[0] == "prompt_id" and len(ids) == 9

    # Resume from checkpoint-2: steps 3 and 4 are trained again from there, the history continues.
    first_run = samples
    resumed = run_rl.main([recipe, "--max_steps=4", "--resume_from_checkpoint=true"])
    assert resumed.state.global_step == 4
    assert [h["step"] for h in logged_steps(resumed)] == [1, 2, 3, 4]
    samples = [json.loads(line) for line in (out / "sampled_completions.jsonl").read_text().splitlines()]
    # The first run's step-3 rows are gone (step 3 was trained again): each step once, in order, steps 1-2 untouched.
    assert [s["step"] for s in samples] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert samples[:4] == first_run[:4]
    # Another algorithm or other rewards do not resume this run's checkpoints.
    with pytest.raises(ConfigError, match="holds checkpoints of another run"):  # RLOO has no loss_type
        run_rl.main([recipe, "--rl_algorithm=rloo", "--resume_from_checkpoint=true"])
    with pytest.raises(ConfigError, match="another RL run \\(rewards: "):
        run_rl.main([recipe, f"--rewards=[function:{reward_module}]", "--resume_from_checkpoint=true"])


def test_rloo_trains_with_its_own_trainer(tmp_path, tiny_model_dir, reward_module):
    out = tmp_path / "rloo"
    recipe = write_recipe(tmp_path, tiny_model_dir, out, [f"function:{reward_module}"], rl_algorithm="rloo",
                          max_steps=2, save_strategy="no", beta=0.05)
    trainer = load_script("run_rl").main([recipe])
    assert type(trainer).__name__ == "ChatalignRLOOTrainer"
    steps = logged_steps(trainer)
    assert len(steps) == 2 and all(math.isfinite(h["rewards/reference_length/mean"]) and math.isfinite(h["kl"])
                                   and "rewards/reference_length/std" in h for h in steps)
    before, after = state_dict(tiny_model_dir), state_dict(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_the_reference_gets_the_policys_embedding_rows(tmp_path, tiny_model_dir, tok, reward_module):
    """load_model grows the policy's embeddings when it adds a pad token; TRL reloads the reference from the path."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig

    from chatalign.train.rewards import import_reward_function
    from chatalign.train.rl import ChatalignGRPOTrainer

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = policy.get_input_embeddings().weight.shape[0]
    policy.resize_token_embeddings(rows + 64)
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=2,
                      num_generations=2, beta=0.1, report_to="none")
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi"}], "reference": "1"}] * 2)
    trainer = ChatalignGRPOTrainer(model=policy, reward_funcs=[import_reward_function(reward_module)], args=args,
                                   train_dataset=data, processing_class=tok)
    assert trainer.ref_model.get_input_embeddings().weight.shape[0] == rows + 64


def refuse(*args, **kwargs):
    raise AssertionError("a model was loaded before the recipe error was reported")


@pytest.mark.parametrize("engine, flag, prepare", [("FSDP", "is_fsdp_enabled", "prepare_fsdp"),
                                                    ("DeepSpeed", "is_deepspeed_enabled", "prepare_deepspeed")])
def test_a_sharded_reference_is_not_resized_but_refused(tmp_path, tiny_model_dir, tok, reward_module, monkeypatch,
                                                        engine, flag, prepare):
    """Under FSDP or DeepSpeed TRL has wrapped the reference before the resize could run: a clear error instead."""
    import trl.trainer.grpo_trainer
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer
    from trl import GRPOConfig

    from chatalign.train.rewards import import_reward_function
    from chatalign.train.rl import ChatalignGRPOTrainer

    create = Trainer.create_accelerator_and_postprocess

    def as_if_sharded(self):  # what accelerate launch with an FSDP / DeepSpeed config sets, on one CPU process
        create(self)
        setattr(self, flag, True)

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", as_if_sharded)
    monkeypatch.setattr(trl.trainer.grpo_trainer, prepare, lambda model, accelerator: model)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy.resize_token_embeddings(policy.get_input_embeddings().weight.shape[0] + 64)
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=2,
                      num_generations=2, beta=0.1, report_to="none")
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi"}], "reference": "1"}] * 2)
    with pytest.raises(ValueError, match=f"TRL's {engine} reference cannot be resized: give the checkpoint a pad "
                                         "token or use PEFT"):
        ChatalignGRPOTrainer(model=policy, reward_funcs=[import_reward_function(reward_module)], args=args,
                             train_dataset=data, processing_class=tok)


@pytest.fixture
def no_policy_loading(monkeypatch):
    """Fails a test whose run loads the policy: the error under test (found from the tokenizer or the data) must
    come first."""
    import chatalign.train.models

    monkeypatch.setattr(chatalign.train.models, "load_model", refuse)


@pytest.fixture
def no_model_loading(no_policy_loading, monkeypatch):
    """Fails a test whose run reaches model or tokenizer loading: the error under test must come first."""
    import chatalign.train.models

    monkeypatch.setattr(chatalign.train.models, "load_training_tokenizer", refuse)


def test_ppo_is_a_clear_error_before_anything_loads(tmp_path, tiny_model_dir, no_model_loading):
    recipe = write_recipe(tmp_path, tiny_model_dir, tmp_path / "ppo", ["function:chatalign.train.rewards:"
                                                                        "gsm8k_correctness"])
    for argv in ([recipe, "--rl_algorithm", "ppo"], [write_recipe(tmp_path, tiny_model_dir, tmp_path / "ppo", [
            "function:chatalign.train.rewards:gsm8k_correctness"], rl_algorithm="ppo")]):
        with pytest.raises(ConfigError, match=r"rl_algorithm ppo is experimental and unsupported with the installed "
                                              r"TRL 1\.16\.\d+ .*use rl_algorithm grpo or rloo"):
            load_script("run_rl").main(argv)
    assert not (tmp_path / "ppo").exists()


@pytest.mark.parametrize("rewards, extra, message", [
    (["function:no_such_module_xyz:reward"], {}, "rewards[0] function 'no_such_module_xyz:reward': cannot import"),
    (["function:chatalign.train.rewards:nope"], {}, "has no 'nope'"),
    (["critic:chatalign.train.rewards:gsm8k_correctness"], {}, "unknown reward kind 'critic'"),
    (["function:chatalign.train.rewards:gsm8k_correctness"], {"reward_weights": [1.0, 2.0]},
     "reward_weights has 2 weights for 1 rewards"),
    (None, {}, "names no reward"),
    (["function:chatalign.train.rewards:gsm8k_correctness"], {"generation_backend": "vllm"},
     "generation with vLLM asked"),
])
def test_bad_recipes_fail_before_a_model_loads(tmp_path, tiny_model_dir, no_model_loading, rewards, extra, message):
    recipe = write_recipe(tmp_path, tiny_model_dir, tmp_path / "bad", rewards, **extra)
    with pytest.raises(ConfigError) as info:
        load_script("run_rl").main([recipe])
    assert message in str(info.value)


def test_requested_algorithm_reads_the_command_line_then_the_files(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("rl_algorithm: rloo\n")
    second.write_text("beta: 0.1\n")
    assert requested_algorithm([str(second)]) == "grpo"
    assert requested_algorithm([str(first), str(second)]) == "rloo"
    assert requested_algorithm([str(first), "--rl_algorithm=grpo"]) == "grpo"
    assert requested_algorithm([str(second), "--rl_algorithm", "ppo"]) == "ppo"
    assert requested_algorithm([str(second), "--rl-algorithm=rloo"]) == "rloo"
    blocks = tmp_path / "blocks.yaml"
    blocks.write_text("base: {beta: 0.1}\nfast: {rl_algorithm: rloo}\n")
    assert requested_algorithm([str(blocks), "--configs", "base", "fast"]) == "rloo"
    assert requested_algorithm([str(blocks), "--configs", "base"]) == "grpo"


def grpo_args(tmp_path, **kwargs):
    from trl import GRPOConfig

    return GRPOConfig(output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=2, num_generations=2,
                      **kwargs)


def test_generation_backend_resolves_to_the_in_process_one_without_vllm(tmp_path, monkeypatch):
    import chatalign.train.rl

    monkeypatch.setattr(chatalign.train.rl, "vllm_usable", lambda: (False, "vllm is not installed"))
    args = grpo_args(tmp_path)
    assert resolve_generation_backend(RLScriptArguments(), args).startswith("transformers (in process); vLLM not")
    assert args.use_vllm is False
    args.use_vllm = True
    with pytest.raises(ConfigError, match="contradicts use_vllm"):
        resolve_generation_backend(RLScriptArguments(generation_backend="transformers"), args)
    with pytest.raises(ConfigError, match="vllm is not installed"):
        resolve_generation_backend(RLScriptArguments(), args)


def test_use_cpu_rules_out_vllm_even_where_it_is_usable(tmp_path, monkeypatch):
    import chatalign.train.rl

    monkeypatch.setattr(chatalign.train.rl, "vllm_usable", lambda: (True, "vllm installed with a CUDA GPU"))
    on_gpu = grpo_args(tmp_path)
    assert resolve_generation_backend(RLScriptArguments(), on_gpu) == "vllm (colocate)" and on_gpu.use_vllm
    on_cpu = grpo_args(tmp_path, use_cpu=True)
    assert resolve_generation_backend(RLScriptArguments(), on_cpu) == ("transformers (in process); vLLM not used: "
                                                                       "use_cpu is set")
    assert on_cpu.use_vllm is False
    with pytest.raises(ConfigError, match="generation_backend vllm.* but use_cpu is set"):
        resolve_generation_backend(RLScriptArguments(generation_backend="vllm"), on_cpu)


def test_system_prompt_goes_first_unless_one_is_given():
    from datasets import Dataset

    from chatalign.train.rl import with_system_prompt

    user, own = {"role": "user", "content": "2 + 2?"}, {"role": "system", "content": "Be terse."}
    rows = Dataset.from_list([{"prompt": [user]}, {"prompt": [own, user]},
                              {"prompt": [{"role": "system", "content": ""}, user]}])
    out = with_system_prompt(rows, "Box the answer.")["prompt"]
    assert [[m["content"] for m in p] for p in out] == [["Box the answer.", "2 + 2?"], ["Be terse.", "2 + 2?"],
                                                        ["Box the answer.", "2 + 2?"]]
    assert with_system_prompt(rows, None) is rows


def test_drop_long_prompts_counts_what_it_drops(tok):
    from datasets import Dataset

    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": text}]}
                              for text in ("Hi", "Explain " * 40, "What is 2 + 2?")])
    kept, counts = drop_long_prompts(rows, tok, 30)
    assert [r["prompt"][0]["content"] for r in kept] == ["Hi", "What is 2 + 2?"]
    assert counts == {"kept": 2, "dropped: prompt over max_prompt_length": 1}
    assert drop_long_prompts(rows, tok, None)[1] == {"kept": 3}
    with pytest.raises(ValueError, match="no train prompt fits max_prompt_length=1"):
        drop_long_prompts(rows, tok, 1)


def test_reward_columns_reach_the_reward_functions_by_name(tmp_path, tiny_model_dir, reward_module, request):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say the number {i}.", "answer": str(i)}) + "\n"
                               for i in range(4)))
    out = tmp_path / "columns"
    recipe = write_recipe(tmp_path, tiny_model_dir, out, ["function:rl_test_rewards:answer_value"],
                          dataset_mixer={str(prompts): 1.0}, reward_columns=["answer"], max_steps=2,
                          save_strategy="no", sampled_completions=4)
    trainer = load_script("run_rl").main([recipe])
    # Two steps of two prompts each are one epoch over the four rows: each row's answer counted once.
    means = [h["rewards/answer_value/mean"] for h in logged_steps(trainer)]
    assert len(means) == 2 and sum(means) / 2 == pytest.approx(1.5)
    rows = [json.loads(line) for line in (out / "sampled_completions.jsonl").read_text().splitlines()]
    assert {row["prompt"][-1]["content"] for row in rows} == {f"Say the number {i}." for i in range(4)}
    for row in rows:  # each completion got its own row's answer: the number its prompt names
        assert row["rewards"]["answer_value"] == float(row["prompt"][-1]["content"].split()[-1].rstrip("."))

    request.getfixturevalue("no_policy_loading")  # from here on, the errors come before the policy loads
    missing = write_recipe(tmp_path, tiny_model_dir, tmp_path / "missing", [f"function:{reward_module}"],
                           reward_columns=["answer"])
    with pytest.raises(ValueError, match=r"dataset '.*gsm8k_test_outputs\.jsonl'.*missing column answer named by "
                                         r"the recipe"):
        load_script("run_rl").main([missing])
    with pytest.raises(ValueError, match="reward_columns: reference reach the rewards already"):
        RLScriptArguments(reward_columns=["reference", "answer"])


def test_grpo_with_lora_trains_and_saves_an_adapter(tmp_path, tiny_model_dir, reward_module):
    from peft import PeftModel
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    recipe = write_recipe(tmp_path, tiny_model_dir, out, [f"function:{reward_module}"], use_peft=True, lora_r=4,
                          lora_alpha=8, lora_target_modules=["q_proj", "v_proj"], max_steps=2, save_strategy="no")
    trainer = load_script("run_rl").main([recipe])
    assert isinstance(trainer.model, PeftModel) and trainer.ref_model is None  # the reference: adapter disabled
    steps = logged_steps(trainer)
    assert [h["step"] for h in steps] == [1, 2]
    assert all(math.isfinite(h["rewards/reference_length/mean"]) and math.isfinite(h["kl"]) for h in steps)
    assert (out / "adapter_config.json").is_file()
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert lora_b and all("q_proj" in k or "v_proj" in k for k in adapter)
    assert any(v.abs().sum() > 0 for v in lora_b.values())  # LoRA B starts at zero: training moved it


def test_vllm_refuses_a_tokenizer_grown_past_the_checkpoint_before_the_model_loads(tmp_path, tiny_model_dir,
                                                                                  monkeypatch, no_policy_loading):
    import chatalign.train.rl

    monkeypatch.setattr(chatalign.train.rl, "vllm_usable", lambda: (True, "vllm installed with a CUDA GPU"))
    recipe = write_recipe(tmp_path, tiny_model_dir, tmp_path / "vllm", ["function:chatalign.train.rewards:"
                                                                         "gsm8k_correctness"],
                          use_cpu=False, generation_backend="vllm", special_tokens={"pad_token": "<|newpad|>"})
    with pytest.raises(ConfigError, match=r"the tokenizer has \d+ tokens but checkpoint .* has vocab_size \d+ "
                                          r"\(tokens beyond it: <\|newpad\|>\); vLLM loads the original checkpoint"):
        load_script("run_rl").main([recipe])


def test_judge_cache_files_are_the_named_file_and_its_rank_siblings_only(tmp_path):
    for name in ("cache.jsonl", "cache.rank0.jsonl", "cache.rank1.jsonl", "cache_other_run.jsonl",
                 "cache.rank1.old.jsonl", "cache2.jsonl", "other.jsonl"):
        (tmp_path / name).write_text("")
    own, read = judge_cache_files(tmp_path / "cache.jsonl")
    assert own == tmp_path / "cache.jsonl"
    assert [p.name for p in read] == ["cache.jsonl", "cache.rank0.jsonl", "cache.rank1.jsonl"]
    own, read = judge_cache_files(tmp_path / "cache.jsonl", world_size=3, process_index=2)
    assert own == tmp_path / "cache.rank2.jsonl"  # not written yet, read (empty) all the same
    assert [p.name for p in read] == ["cache.jsonl", "cache.rank0.jsonl", "cache.rank1.jsonl", "cache.rank2.jsonl"]
    (tmp_path / "my.judgments.rank0.jsonl").write_text("")
    _, read = judge_cache_files(tmp_path / "my.judgments.jsonl", world_size=2, process_index=1)
    assert [p.name for p in read] == ["my.judgments.jsonl", "my.judgments.rank0.jsonl", "my.judgments.rank1.jsonl"]


def test_prune_sampled_completions_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "sampled_completions.jsonl"
    rows = [{"step": step, "completion": f"c{step}{i}"} for step in (1, 2, 3) for i in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "compl')  # cut off by a crash
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    assert prune_sampled_completions(tmp_path, str(tmp_path / "checkpoint-2")) == 3
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:4]
    assert prune_sampled_completions(tmp_path, str(tmp_path / "checkpoint-2")) == 0
    assert prune_sampled_completions(tmp_path, None) == 4 and path.read_text() == ""  # a fresh start: none kept
    superseded = (tmp_path / "sampled_completions.superseded.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in superseded[:2] + superseded[3:]] == rows[4:] + rows[:4]  # moved, not lost
    assert superseded[2] == '{"step": 3, "compl'


# --------------------------------------------------------------------------------------------------------------------
# Slow: the embedded recipe on SmolLM2 with each reward kind


def judge_rating(body) -> str:
    reply = body["messages"][-1]["content"].split("[Reply to rate]", 1)[1]
    return f"Rating: [[{min(10, 1 + len(reply) // 20)}]]"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["function", "reward_model", "judge"])
def test_embedded_recipe_trains_smollm2_with_each_reward_kind(tmp_path, smollm2_dir, tiny_rm, kind):
    out = tmp_path / f"smollm2-{kind}"
    overrides = [f"--model_name_or_path={smollm2_dir}", f"--output_dir={out}", "--max_steps=1", "--report_to=none",
                 "--num_generations=2", "--per_device_train_batch_size=2", "--max_completion_length=24",
                 "--save_strategy=no"]
    with Stub(content=judge_rating) as stub:
        extra = {"function": None, "reward_model": f"reward_model:{tiny_rm}",
                 "judge": f"judge:llm:stub-judge@{stub.url}"}[kind]
        if extra is not None:  # the recipe's rewards plus one of this kind
            recipe = yaml.safe_load(RECIPE.read_text())
            rewards = [*recipe["rewards"], extra]
            overrides.append(f"--rewards={json.dumps(rewards)}")
        trainer = load_script("run_rl").main([str(RECIPE), *overrides])
        if kind == "judge":
            assert len(stub.requests) >= 1 and (out / "reward_judgments.jsonl").is_file()
    [step] = logged_steps(trainer)
    names = ["gsm8k_correctness", "boxed_answer_format"] + {"function": [], "reward_model": ["reward_model_tiny_rm"],
                                                            "judge": [trainer.reward_func_names[-1]]}[kind]
    assert trainer.reward_func_names == names
    for name in names:
        assert math.isfinite(step[f"rewards/{name}/mean"]) and math.isfinite(step[f"rewards/{name}/std"])
    assert math.isfinite(step["kl"]) and 0 < step["completions/mean_length"] <= 24
    assert (out / "sampled_completions.jsonl").is_file() and (out / "model.safetensors").is_file()
