"""chatalign.eval.alpaca, scripts/run_alpaca_eval.py and show_alpaca_eval_result.py: the leaderboard's figures from
the released annotations, alpaca_eval's annotator driven through chatalign's judge (a stub with logprobs, the tiny
model in process), the LC win rate only where df_gamed.csv is at hand, and bad inputs named."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, load_script
from helpers.chat_stub import Stub, read_jsonl

from chatalign.eval import alpaca

SHARED = REPO.parent / "shared" / "data" / "alpaca_eval"
EVAL_SET = SHARED / "results" / "gpt4_1106_preview" / "model_outputs.json"
RELEASED = {name: SHARED / "results" / name / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json"
            for name in ("gpt-3.5-turbo-1106", "gpt-3.5-turbo-1106_verbose")}
FIRST_N = 4


def leaderboard_row(name: str) -> dict:
    with open(SHARED / "leaderboards" / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv", newline="") as handle:
        return next(row for row in csv.DictReader(handle) if row[""] == name)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_metrics_of_the_released_annotations_are_the_leaderboards(name):
    got = alpaca.metrics(json.loads(RELEASED[name].read_text()))
    want = leaderboard_row(name)
    for key in ("win_rate", "standard_error", "discrete_win_rate"):
        assert got[key] == pytest.approx(float(want[key]), abs=1e-9), key
    for key in ("n_wins", "n_wins_base", "n_draws", "n_total", "avg_length"):
        assert got[key] == int(want[key]), key
    assert got["length_controlled_winrate"] is None and "df_gamed.csv" in got["lc_unavailable"]  # hub offline


def synthetic_df_gamed(path, n=805, seed=0):
    """A file in df_gamed.csv's columns (two gamed baselines over the same instructions): the real one is on the hub."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(size=n)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "index", "instruction_difficulty", "preference", "std_delta_len",
                         "not_gamed_baseline"])
        for model in ("gamed_verbose", "gamed_concise"):
            for i in range(n):
                writer.writerow([model, i, difficulty[i], rng.uniform(), rng.normal(), False])
    return path


def test_length_controlled_win_rate_is_alpaca_evals_glm_given_df_gamed(tmp_path, monkeypatch):
    annotations = json.loads(RELEASED["gpt-3.5-turbo-1106"].read_text())
    data = synthetic_df_gamed(tmp_path / "df_gamed.csv")
    got = alpaca.metrics(annotations, None, str(data))
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate

    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda *a, **k: str(data))
    want = glm_winrate.get_length_controlled_winrate(pd.DataFrame(annotations), save_weights_dir=None)
    assert got["length_controlled_winrate"] == pytest.approx(want["length_controlled_winrate"])
    assert got["lc_standard_error"] == pytest.approx(want["lc_standard_error"])
    assert "lc_unavailable" not in got
    subset = alpaca.metrics(annotations[:100], None, str(data))  # df_gamed.csv is by position: no LC for a subset
    assert subset["length_controlled_winrate"] is None and "all 805 instructions" in subset["lc_unavailable"]
    missing = alpaca.metrics(annotations, None, str(tmp_path / "nope.csv"))
    assert missing["length_controlled_winrate"] is None and "nope.csv: no such file" in missing["lc_unavailable"]


def test_show_script_reports_the_leaderboard_as_json_and_plots(tmp_path, capsys):
    show = load_script("show_alpaca_eval_result")
    plot = tmp_path / "ae.png"
    document = show.main(["--annotations_file", *map(str, RELEASED.values()), "--format", "json",
                          "--plot_path", str(plot)])
    assert json.loads(capsys.readouterr().out) == document
    for name in RELEASED:
        assert document["models"][name]["win_rate"] == pytest.approx(float(leaderboard_row(name)["win_rate"]))
    assert document["baseline"] == "gpt4_1106_preview" and plot.stat().st_size > 1000
    show.main(["--annotations_file", str(RELEASED["gpt-3.5-turbo-1106"]), "--plot_path", str(plot)])
    table = capsys.readouterr().out
    assert "gpt-3.5-turbo-1106" in table and "9.18" in table and "LC missing: df_gamed.csv" in table


P_M = 0.25  # the stub judge's probability that "m" (the first output shown) is better


def weighted_logprobs(body, content):
    top = [{"token": "m", "logprob": math.log(P_M), "bytes": None},
           {"token": "M", "logprob": math.log(1 - P_M), "bytes": None}]
    return [{"token": "M", "logprob": math.log(1 - P_M), "bytes": None, "top_logprobs": top}]


def run(argv, confirm=lambda _: pytest.fail("a loopback judge is never confirmed")):
    return load_script("run_alpaca_eval").main(argv, confirm=confirm)


def base_argv(tmp_path, model_dir, *extra):
    return ["--model_path", str(model_dir), "--model_id", "tiny", "--eval_set_path", str(EVAL_SET),
            "--first_n", str(FIRST_N), "--gen_max_tokens", "8", "--backend", "transformers",
            "--output_dir", str(tmp_path / "ae"), "--result_save_path", str(tmp_path / "summary.json"),
            "--max_retries", "0", *extra]


def test_alpaca_evals_annotator_through_the_judge_keeps_its_order_randomisation(tmp_path, tiny_model_dir):
    with Stub(content="M", logprobs=weighted_logprobs) as stub:
        summary = run(base_argv(tmp_path, tiny_model_dir, "--judge_model", "stub", "--judge_base_url", stub.url))
        assert len(stub.requests) == FIRST_N
        request = stub.requests[0]
        assert (request["max_tokens"], request["temperature"], request["logprobs"], request["top_logprobs"]) == (
            1, 1.0, True, 5)
        outputs = json.loads((tmp_path / "ae" / "tiny" / "model_outputs.json").read_text())
        annotations = json.loads((tmp_path / "ae" / "tiny" / alpaca.DEFAULT_ANNOTATOR / "annotations.json").read_text())
        assert [a["instruction"] for a in annotations] == [o["instruction"] for o in outputs]
        for body in stub.requests:
            prompt = body["messages"][-1]["content"]
            annotation = next(a for a in annotations if a["instruction"] in prompt)
            model_first = prompt.index(annotation["output_2"]) < prompt.index(annotation["output_1"])
            # preference 2 = the model wins: P(model better) is P(m) when the model's output is shown first
            assert annotation["preference"] == pytest.approx(1 + (P_M if model_first else 1 - P_M))
        assert {a["generator_1"] for a in annotations} == {"gpt4_1106_preview"}
        (scores,) = summary["runs"]
        assert scores["win_rate"] == pytest.approx(100 * np.mean([a["preference"] - 1 for a in annotations]))
        assert scores["length_controlled_winrate"] is None and "805" in scores["lc_unavailable"]
        assert summary["judge"] == "stub" and summary["prompt_version"].startswith("alpaca_eval-0.6.6:")
        again = run(base_argv(tmp_path, tiny_model_dir, "--judge_model", "stub", "--judge_base_url", stub.url))
        assert len(stub.requests) == FIRST_N and again["judge_calls_this_run"] == 0  # nothing paid twice
    assert again["runs"] == summary["runs"]


def test_the_local_judge_in_process_gives_alpaca_eval_its_exact_first_token_logprobs(tmp_path, tiny_model_dir):
    summary = run(base_argv(tmp_path, tiny_model_dir, "--judge_model", str(tiny_model_dir)))
    annotations = json.loads((tmp_path / "ae" / "tiny" / alpaca.DEFAULT_ANNOTATOR / "annotations.json").read_text())
    cached = read_jsonl(tmp_path / "ae" / ".work" / "judgments.jsonl")
    assert len(cached) == FIRST_N and summary["judge_endpoint"] == "local checkpoint"
    shown_first = []
    for row in cached:
        logprobs = row["first_token_logprobs"]
        shown_first.append(math.exp(logprobs["m"]) / (math.exp(logprobs["m"]) + math.exp(logprobs["M"])))
    preferences = sorted(a["preference"] for a in annotations)
    # each preference is 2 - P(m) (the model shown second) or 1 + P(m) (shown first), P(m) renormalised over m, M
    for p in preferences:
        assert any(p == pytest.approx(2 - q) or p == pytest.approx(1 + q) for q in shown_first)


def test_a_custom_baseline_and_instruction_set(tmp_path, tiny_model_dir):
    instructions = tmp_path / "instructions.jsonl"
    instructions.write_text("".join(json.dumps({"instruction": f"Say {w}."}) + "\n" for w in ("hi", "bye")))
    reference = tmp_path / "base_outputs.json"
    reference.write_text(json.dumps([{"instruction": f"Say {w}.", "output": w, "generator": "base"}
                                     for w in ("hi", "bye")]))
    with Stub(content="M", logprobs=weighted_logprobs) as stub:
        argv = base_argv(tmp_path, tiny_model_dir, "--judge_model", "stub", "--judge_base_url", stub.url,
                         "--eval_set_path", str(instructions), "--reference_outputs", str(reference))
        summary = run(argv)
    assert summary["baseline"] == "base" and summary["instructions"] == 2
    reference.write_text(json.dumps([{"instruction": "Say hi.", "output": "hi", "generator": "base"}]))
    with pytest.raises(ValueError, match=r"base_outputs\.json: 2 outputs for 1 reference instructions; output 1 "
                                         r"\('Say bye\.'\) answers no instruction"):
        run(argv)
    with Stub(content="M", logprobs=weighted_logprobs) as stub:  # another checkpoint's outputs as the baseline
        summary = run(base_argv(tmp_path, tiny_model_dir, "--judge_model", "stub", "--judge_base_url", stub.url,
                                "--eval_set_path", str(instructions), "--reference_model_path", str(tiny_model_dir),
                                "--model_id", "tuned"))
    generated = json.loads((tmp_path / "ae" / tiny_model_dir.name / "model_outputs.json").read_text())
    assert summary["baseline"] == tiny_model_dir.name and [o["instruction"] for o in generated] == ["Say hi.",
                                                                                                   "Say bye."]


def test_bad_inputs_are_named_before_any_work(tmp_path, tiny_model_dir):
    bad = tmp_path / "eval.json"
    bad.write_text(json.dumps([{"instruction": "ok", "output": "x"}, {"instruction": "", "output": "y"}]))
    with pytest.raises(ValueError, match=r"eval\.json row 1, field 'instruction': missing or empty"):
        run(base_argv(tmp_path, tiny_model_dir, "--eval_set_path", str(bad)))
    with pytest.raises(ValueError, match="function calls"):
        run(base_argv(tmp_path, tiny_model_dir, "--annotators_config", "alpaca_eval_gpt4_turbo_fn"))
    with pytest.raises(ValueError, match="unknown AlpacaEval annotator 'no_such_annotator'"):
        run(base_argv(tmp_path, tiny_model_dir, "--annotators_config", "no_such_annotator"))
    with pytest.raises(ConnectionError, match="--eval_set_path"):  # the hub is offline in the tests
        run(base_argv(tmp_path, tiny_model_dir)[2:4] + ["--model_path", str(tiny_model_dir)])
    assert not (tmp_path / "ae").exists()


def test_judge_only_needs_every_instruction_answered(tmp_path, tiny_model_dir):
    with Stub(content="M", logprobs=weighted_logprobs) as stub:
        judge = ["--judge_model", "stub", "--judge_base_url", stub.url]
        run(base_argv(tmp_path, tiny_model_dir, *judge))
        outputs_file = tmp_path / "ae" / "tiny" / "model_outputs.json"
        outputs_file.write_text(json.dumps(json.loads(outputs_file.read_text())[:-1]))
        with pytest.raises(ValueError, match=r"model_outputs\.json: 3 outputs for 4 reference instructions; "
                                             r"instruction 3 .* has no output"):
            run(base_argv(tmp_path, tiny_model_dir, *judge, "--judge_only", "true"))


def test_num_runs_write_a_folder_each_and_summarise(tmp_path, tiny_model_dir):
    with Stub(content="M", logprobs=weighted_logprobs) as stub:
        summary = run(base_argv(tmp_path, tiny_model_dir, "--judge_model", "stub", "--judge_base_url", stub.url,
                                "--num_runs", "2"))
    assert [Path(f).name for f in summary["files"]] == ["run1", "run2"]
    for k in (1, 2):
        assert (tmp_path / "ae" / "tiny" / f"run{k}" / alpaca.DEFAULT_ANNOTATOR / "annotations.json").is_file()
    rates = [r["win_rate"] for r in summary["runs"]]
    assert summary["over_runs"]["win_rate"]["mean"] == pytest.approx(np.mean(rates))
