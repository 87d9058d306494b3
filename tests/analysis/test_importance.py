"""compute_importance_weight on tiny Llamas: log mu(y|x) per candidate generator with its own template, the merged
file, its mixture, the 8-bit error on CPU, and the wis feedback into run_dpo."""

import json
import math

import pytest
from conftest import build_tiny_llama, load_script

from chatalign.analysis.importance import importance_rows, mixture_logp, parse_candidates
from chatalign.configs import ConfigError
from chatalign.store import read_jsonl

WORDS = ["cat", "dog", "sun", "sea", "tree", "rain", "bird", "fish"]


@pytest.fixture(scope="module")
def pref_file(tmp_path_factory):
    rows = [{"prompt": [{"role": "user", "content": f"Say something about the {w}."}],
             "chosen": [{"role": "assistant", "content": f"The {w} is lovely."}],
             "rejected": [{"role": "assistant", "content": f"{w}?"}], "prompt_id": f"q{i}"}
            for i, w in enumerate(WORDS)]
    path = tmp_path_factory.mktemp("importance_data") / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory, tiny_tokenizer):
    return build_tiny_llama(tmp_path_factory.mktemp("generator_llama"), tiny_tokenizer, seed=3)


@pytest.fixture(scope="module")
def importance():
    return load_script("compute_importance_weight")


def cli(data, out, **overrides):
    args = {"dataset_mixer": f"{{{data}: 1.0}}", "dataset_splits": "train", "bf16": "false", "use_cpu": "true",
            "activation_checkpointing": "false", "max_length": 64, "per_device_train_batch_size": 4,
            "report_to": "none", "disable_tqdm": "true", "output_dir": str(out), "seed": 0}
    args.update(overrides)
    return [f"--{k}={v}" for k, v in args.items()]


def test_mixture_and_candidate_specs():
    assert mixture_logp([-3.0]) == -3.0
    assert mixture_logp([-1.0, -3.0]) == pytest.approx(math.log((math.exp(-1) + math.exp(-3)) / 2))
    assert mixture_logp([-2000.0, -2001.0]) == pytest.approx(-2000 + math.log((1 + math.exp(-1)) / 2))  # no underflow
    assert parse_candidates(None, "org/WizardLM-7B", "vicuna_v1.1") == [
        {"name": "WizardLM-7B", "model_name_or_path": "org/WizardLM-7B", "revision": None,
         "tokenizer_name_or_path": None, "chat_template": "vicuna_v1.1"}]
    for candidates, message in (([{"model_name_or_path": "a", "temperature": 1}], r"candidate_models\[0\]: unknown "
                                                                                  r"key\(s\) temperature"),
                                ([{"name": "x"}], r"candidate_models\[0\]: model_name_or_path is required"),
                                ([{"model_name_or_path": "a/m"}, {"model_name_or_path": "b/m"}],
                                 r"candidate_models\[1\]: name 'm' is used twice")):
        with pytest.raises(ConfigError, match=message):
            parse_candidates(candidates, None, None)
    with pytest.raises(ConfigError, match="give model_name_or_path"):
        parse_candidates(None, None, None)
    rows, dropped = importance_rows([{"prompt_id": "a"}, {"prompt_id": "b"}], ["ka", "kb"],
                                    {"m1": [(-1.0, -2.0), None], "m2": [(-3.0, -4.0), (-1.0, -1.0)]})
    assert dropped == 1 and [r["pair_id"] for r in rows] == ["ka", "kb"] and rows[0]["logps/m2/rejected"] == -4.0
    assert rows[1] == {"pair_id": "kb", "prompt_id": "b", "source": None, "dropped": True, "chosen_logps": None,
                       "rejected_logps": None}


@pytest.fixture(scope="module")
def two_candidates(importance, tiny_model_dir, generator_dir, pref_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("importance_out")
    recipe = out / "recipe.yaml"
    recipe.write_text(json.dumps({"candidate_models": [
        {"name": "chatml-gen", "model_name_or_path": str(tiny_model_dir)},
        {"name": "zephyr-gen", "model_name_or_path": str(generator_dir), "chat_template": "zephyr"}]}))
    summary = importance.main([str(recipe), *cli(pref_file, out)])
    return out, summary


def test_merged_file_holds_each_candidate_and_their_mixture(two_candidates):
    out, summary = two_candidates
    rows = read_jsonl(out / "importance_weights.jsonl")
    assert len(rows) == 8 == summary["pairs"] and {r["prompt_id"] for r in rows} == {f"q{i}" for i in range(8)}
    for row in rows:
        for side in ("chosen", "rejected"):
            own = [row[f"logps/chatml-gen/{side}"], row[f"logps/zephyr-gen/{side}"]]
            assert all(v < 0 for v in own) and row[f"{side}_logps"] == pytest.approx(mixture_logp(own))
    assert (out / ".work" / "chatml-gen.parquet").exists() and (out / ".work" / "zephyr-gen.parquet").exists()
    assert [c["chat_template"] for c in summary["candidates"]] == [None, "zephyr"]


def test_candidate_logps_are_those_of_the_dpo_reference_pass_with_its_template(two_candidates, tiny_model_dir,
                                                                              pref_file, tmp_path):
    """The chatml candidate is tiny_model_dir with its own template: precompute_ref_logprobs of a DPO run on it
    gives the very same numbers."""
    from chatalign.train.dpo.reference import read_ref_logps_file

    out, _ = two_candidates
    ref_file = tmp_path / "ref.parquet"
    load_script("precompute_ref_logprobs").main(cli(pref_file, tmp_path / "pre", model_name_or_path=tiny_model_dir,
                                                    precompute_file_path=ref_file))
    reference = read_ref_logps_file(ref_file).logps
    rows = {r["pair_id"]: r for r in read_jsonl(out / "importance_weights.jsonl")}
    assert reference.keys() == rows.keys()
    for key, (chosen, rejected) in reference.items():
        assert rows[key]["logps/chatml-gen/chosen"] == pytest.approx(chosen, abs=1e-5)
        assert rows[key]["logps/chatml-gen/rejected"] == pytest.approx(rejected, abs=1e-5)


def test_rerun_computes_nothing(importance, two_candidates, pref_file, monkeypatch):
    import chatalign.analysis.sequence_logps as sequence_logps

    out, summary = two_candidates
    monkeypatch.setattr(sequence_logps, "load_scoring_model", lambda *a, **k: pytest.fail("a model was loaded"))
    again = importance.main([str(out / "recipe.yaml"), *cli(pref_file, out)])
    assert again["pairs"] == summary["pairs"]


def test_8bit_on_a_machine_without_cuda_is_a_clear_error(importance, tiny_model_dir, pref_file, tmp_path):
    with pytest.raises(ValueError, match=r"--load_in_8bit needs a CUDA GPU \(bitsandbytes\); this machine has none"):
        importance.main(cli(pref_file, tmp_path, model_name_or_path=tiny_model_dir, load_in_8bit="true",
                            llm_int8_enable_fp32_cpu_offload="true"))
    with pytest.raises(ValueError, match="llm_int8_enable_fp32_cpu_offload needs load_in_8bit"):
        importance.main(cli(pref_file, tmp_path, model_name_or_path=tiny_model_dir,
                            llm_int8_enable_fp32_cpu_offload="true"))


def test_importance_weights_feed_wis_into_run_dpo(two_candidates, tiny_model_dir, pref_file, tmp_path):
    """The end-to-end path of LION's wis: the merged file's log mu weights every pair's DPO loss."""
    out, _ = two_candidates
    trainer = load_script("run_dpo").main(cli(
        pref_file, tmp_path / "dpo", model_name_or_path=tiny_model_dir, max_steps=2, logging_steps=1,
        save_strategy="no", learning_rate=1e-3, per_device_train_batch_size=2,
        wis_importance_file=out / "importance_weights.jsonl", wis_gamma=0.01))
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(math.isfinite(e["loss"]) for e in logs)
    assert all(0 < e["wis/weight"] < 1 for e in logs)
    # At the first step the policy is its reference, so every pair's DPO loss is log 2: the batch loss is the mean
    # wis weight times log 2.
    assert logs[0]["loss"] == pytest.approx(logs[0]["wis/weight"] * math.log(2), rel=1e-4)
