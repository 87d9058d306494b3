"""compute_lm_reward on tiny Llamas: TRL's summed log-probs of both models, LION's weight, the summary, reuse of cached
and precomputed log-probs, and the rm_importance feedback into run_dpo."""

import json
import math

import pytest
import torch
from conftest import build_tiny_llama, load_script
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatalign.analysis.lm_reward import reward_row, reward_summary
from chatalign.store import pair_id, read_jsonl

WORDS = ["cat", "dog", "sun", "sea", "tree", "rain", "bird", "fish", "moon", "star"]


def preference_rows(n=10):
    return [{"prompt": [{"role": "user", "content": f"Write one short line about the {w}."}],
             "chosen": [{"role": "assistant", "content": f"The {w} is here today."}],
             "rejected": [{"role": "assistant", "content": f"No {w}."}], "prompt_id": f"p{i}",
             "score_chosen": 8.0, "score_rejected": 3.0} for i, w in enumerate(WORDS[:n])]


@pytest.fixture(scope="module")
def pref_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm_reward_data") / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in preference_rows()))
    return path


@pytest.fixture(scope="module")
def dpo_model_dir(tmp_path_factory, tiny_tokenizer):
    """Stands in for the DPO model: same tokenizer and architecture as tiny_model_dir, other weights."""
    return build_tiny_llama(tmp_path_factory.mktemp("dpo_llama"), tiny_tokenizer, seed=7)


def cli(policy, ref, data, out, **overrides):
    args = {"model_name_or_path": str(policy), "dataset_mixer": f"{{{data}: 1.0}}", "dataset_splits": "train",
            "bf16": "false", "use_cpu": "true", "activation_checkpointing": "false", "max_length": 64,
            "per_device_train_batch_size": 4, "report_to": "none", "disable_tqdm": "true", "output_dir": str(out),
            "seed": 0, "beta": 0.1}
    if ref is not None:
        args["ref_model_name_or_path"] = str(ref)
    args.update(overrides)
    return [f"--{k}={v}" for k, v in args.items()]


def summed_logps(model_dir, prompt, response):
    """log p(response | prompt): the chat template's prompt, then the response tokens, summed by hand."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)["input_ids"]
    full = tokenizer.apply_chat_template(prompt + response, tokenize=True)["input_ids"]
    assert full[:len(prompt_ids)] == prompt_ids
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    return sum(logprobs[t - 1, full[t]].item() for t in range(len(prompt_ids), len(full)))


def test_reward_row_is_lions_definition():
    row = reward_row(policy=(-10.0, -12.0), reference=(-11.0, -9.0), beta=0.5)
    assert row["chosen_reward"] == 0.5 and row["rejected_reward"] == -1.5 and row["margin"] == 2.0
    assert row["weight"] == pytest.approx(1 / (1 + math.exp(2.0)))  # sigmoid(rejected - chosen)
    summary = reward_summary([row, reward_row((-1.0, -1.0), (-1.0, -1.0), 0.5)], 0.5, dropped=1)
    assert summary["accuracy"] == 0.5 and summary["ties"] == 1 and summary["dropped: prompt fills max_length"] == 1
    assert summary["margin_quantiles"]["0"] == 0.0 and summary["margin_quantiles"]["1"] == 2.0


@pytest.fixture(scope="module")
def lm_reward():
    return load_script("compute_lm_reward")


@pytest.fixture(scope="module")
def rewards_run(lm_reward, tiny_model_dir, dpo_model_dir, pref_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_reward_out")
    summary = lm_reward.main(cli(tiny_model_dir, dpo_model_dir, pref_file, out))
    return out, summary


def test_lm_rewards_are_beta_times_summed_logprob_ratios(rewards_run, tiny_model_dir, dpo_model_dir):
    out, summary = rewards_run
    rows = read_jsonl(out / "lm_rewards.jsonl")
    by_id = {r["pair_id"]: r for r in rows}
    assert len(rows) == 10 and summary["pairs"] == 10
    first = preference_rows()[0]
    row = by_id[pair_id(first["prompt"], first["chosen"], first["rejected"])]
    assert row["prompt_id"] == "p0" and row["source"].endswith("prefs.jsonl")
    for key, model_dir, response in (("policy_chosen_logps", tiny_model_dir, first["chosen"]),
                                     ("ref_chosen_logps", dpo_model_dir, first["chosen"]),
                                     ("policy_rejected_logps", tiny_model_dir, first["rejected"]),
                                     ("ref_rejected_logps", dpo_model_dir, first["rejected"])):
        assert row[key] == pytest.approx(summed_logps(model_dir, first["prompt"], response), abs=1e-3)
    for r in rows:
        assert r["chosen_reward"] == pytest.approx(0.1 * (r["policy_chosen_logps"] - r["ref_chosen_logps"]))
        assert r["rejected_reward"] == pytest.approx(0.1 * (r["policy_rejected_logps"] - r["ref_rejected_logps"]))
        assert r["weight"] == pytest.approx(1 / (1 + math.exp(r["chosen_reward"] - r["rejected_reward"])))
    assert summary["accuracy"] == pytest.approx(sum(r["margin"] > 0 for r in rows) / 10)
    saved = json.loads((out / "lm_reward_summary.json").read_text())
    assert saved["accuracy"] == summary["accuracy"] and saved["weight_definition"].startswith("sigmoid(rejected")
    assert (out / "lm_reward_margins.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_loads_no_model_and_reuses_a_precomputed_reference_file(lm_reward, rewards_run, tiny_model_dir,
                                                                      dpo_model_dir, pref_file, tmp_path,
                                                                      monkeypatch):
    import chatalign.analysis.sequence_logps as sequence_logps

    out, summary = rewards_run
    with monkeypatch.context() as patched:
        patched.setattr(sequence_logps, "load_scoring_model", lambda *a, **k: pytest.fail("a model was loaded"))
        again = lm_reward.main(cli(tiny_model_dir, dpo_model_dir, pref_file, out))
    assert again["accuracy"] == summary["accuracy"]

    # precompute_ref_logprobs' file for a DPO run whose reference is the SFT model serves LION's policy (the SFT
    # model): only the DPO model's log-probs are computed.
    precomputed = tmp_path / "ref.parquet"
    load_script("precompute_ref_logprobs").main(cli(tiny_model_dir, None, pref_file, tmp_path / "pre",
                                                    precompute_file_path=precomputed))
    fresh = tmp_path / "fresh"
    reused = lm_reward.main(cli(tiny_model_dir, dpo_model_dir, pref_file, fresh, precompute_file_path=precomputed))
    assert not (fresh / ".work" / "policy_logps.parquet").exists() and (fresh / ".work" / "reference_logps.parquet"
                                                                        ).exists()
    assert reused["accuracy"] == summary["accuracy"]
    before = {r["pair_id"]: r["margin"] for r in read_jsonl(out / "lm_rewards.jsonl")}
    after = {r["pair_id"]: r["margin"] for r in read_jsonl(fresh / "lm_rewards.jsonl")}
    assert after.keys() == before.keys() and all(after[k] == pytest.approx(before[k], abs=1e-4) for k in before)

    with pytest.raises(ValueError, match=r"precomputed file .*ref.parquet matches neither model: policy: precomputed "
                                         r"with max_length=64, this run uses 48"):
        lm_reward.main(cli(tiny_model_dir, dpo_model_dir, pref_file, tmp_path / "x", precompute_file_path=precomputed,
                           max_length=48))


def test_a_reference_is_required(lm_reward, tiny_model_dir, pref_file, tmp_path):
    from chatalign.configs import ConfigError

    with pytest.raises(ConfigError, match="ref_model_name_or_path is required"):
        lm_reward.main(cli(tiny_model_dir, None, pref_file, tmp_path))


def test_lm_reward_feeds_rm_importance_selection_into_run_dpo(rewards_run, tiny_model_dir, pref_file, tmp_path):
    """The end-to-end path of LION's rm_importance: compute_lm_reward's weights select run_dpo's pairs."""
    out, _ = rewards_run
    weights = {r["prompt_id"]: r["weight"] for r in read_jsonl(out / "lm_rewards.jsonl")}
    run = load_script("run_dpo")
    trainer = run.main(cli(tiny_model_dir, None, pref_file, tmp_path / "dpo", rm_importance_file=out / "lm_rewards.jsonl",
                           max_data_size=4, max_steps=1, logging_steps=1, save_strategy="no",
                           learning_rate=1e-3, per_device_train_batch_size=2))
    selected = trainer.train_dataset["prompt_id"]
    assert len(selected) == min(4, sum(w >= 0.1 for w in weights.values())) and all(weights[p] >= 0.1
                                                                                     for p in selected)
    assert math.isfinite(trainer.state.log_history[0]["loss"])
    counts = json.loads((tmp_path / "dpo" / "train_results.json").read_text())["data"]["train"]["selection"]
    assert counts["sampling"] == "rm_importance" and counts["selected"] == len(selected)


@pytest.mark.slow
def test_lion_feedback_paths_on_the_embedded_default(smollm2_dir, data_dir, tmp_path):
    """SmolLM2 DPO'd a few steps on 16 real pairs, then LION's loop: its implicit rewards against the base, rm_importance
    selection from them, importance weights under the base, and wis training."""
    data = tmp_path / "dpo_pairs.json"  # 12 of LLaMA-Factory's real DPO demo pairs, in its format
    data.write_text(json.dumps(json.loads((data_dir / "llama_factory_demo" / "dpo_en_demo.json").read_text())[:12]))
    common = {"max_length": 192, "per_device_train_batch_size": 4}
    run_dpo = load_script("run_dpo")
    run_dpo.main(cli(smollm2_dir, None, data, tmp_path / "dpo", max_steps=3, learning_rate=1e-5, save_strategy="no",
                     logging_steps=1, **common))
    summary = load_script("compute_lm_reward").main(cli(smollm2_dir, tmp_path / "dpo", data, tmp_path / "rewards",
                                                        **common))
    rows = read_jsonl(tmp_path / "rewards" / "lm_rewards.jsonl")
    scored = [r for r in rows if not r["dropped"]]
    assert len(rows) == 12 and len(scored) == summary["pairs"] == 12 - summary["dropped: prompt fills max_length"]
    assert summary["pairs"] >= 4 and all(0 < r["weight"] < 1 for r in scored)
    # policy = the base, reference = its DPO: the weight is the DPO model's preference for the chosen responses it
    # was trained on, so it leans above 1/2
    assert summary["mean_weight"] > 0.5

    selected = run_dpo.main(cli(smollm2_dir, None, data, tmp_path / "dpo_rm", max_steps=1, save_strategy="no",
                                logging_steps=1, rm_importance_file=tmp_path / "rewards" / "lm_rewards.jsonl",
                                max_data_size=3, **common))
    assert len(selected.train_dataset) == 3 and math.isfinite(selected.state.log_history[0]["loss"])

    load_script("compute_importance_weight").main(cli(smollm2_dir, None, data, tmp_path / "mu", **common))
    weighted = run_dpo.main(cli(smollm2_dir, None, data, tmp_path / "dpo_wis", max_steps=1, save_strategy="no",
                                logging_steps=1, wis_importance_file=tmp_path / "mu" / "importance_weights.jsonl",
                                **common))
    assert 0 < weighted.state.log_history[0]["wis/weight"] < 1
