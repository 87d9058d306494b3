"""chatalign.eval.reporting and scripts/show_eval_summary.py: several checkpoints' summaries in one table, each judged
benchmark's judge under it, columns nobody has a number in left out, the note, the plot."""

from __future__ import annotations

import json

import pytest
from conftest import load_script

from chatalign.eval.reporting import format_table, headline_scores, run_statistics


def summaries(tmp_path):
    files = []
    for model, mt, win in (("base", 4.5, None), ("dpo", 5.25, 61.0)):
        folder = tmp_path / model / "eval_results"
        folder.mkdir(parents=True)
        mt_summary = {"bench": "mt_bench", "model_id": model, "judge": "J", "scoring": "logprobs",
                      "over_runs": {"average": run_statistics([mt]), "lion_overall": run_statistics([None])}}
        (folder / "mt_bench.json").write_text(json.dumps(mt_summary))
        files.append(folder / "mt_bench.json")
        if win is not None:
            alpaca = {"bench": "alpaca_eval", "model_id": model, "judge": "K",
                      "over_runs": {"win_rate": run_statistics([win]),
                                    "length_controlled_winrate": run_statistics([None])}}
            (folder / "alpaca_eval.json").write_text(json.dumps(alpaca))
            files.append(folder / "alpaca_eval.json")
    return files


def test_headline_scores_and_statistics():
    assert run_statistics([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(1.4142135), "median": 2.0, "runs": 2}
    assert run_statistics([1.0, None])["mean"] is None  # a run without a number: missing, not averaged around
    assert headline_scores({"bench": "lm_eval", "openllm_v1_average": 40.0})["Open LLM v1 average"] == 40.0
    assert headline_scores({"bench": "mt_bench", "over_runs": {}}) == {"MT-Bench (FastChat avg)": None,
                                                                       "MT-Bench overall (LION)": None}
    assert "-" in format_table([{"a": None}], ["a"])


def test_show_eval_summary_table_json_and_plot(tmp_path, capsys):
    summaries(tmp_path)
    show = load_script("show_eval_summary")
    document = show.main(["--model_paths", str(tmp_path / "base"), str(tmp_path / "dpo"), "--note", "DEMO JUDGE",
                          "--plot_path", str(tmp_path / "s.png")])
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "DEMO JUDGE" and "MT-Bench (FastChat avg)" in out[2] and "LION" not in "\n".join(out)
    assert [line.split()[0] for line in out[4:6]] == ["base", "dpo"]
    assert "judge of mt_bench: J (logprobs scoring)" in out and "judge of alpaca_eval: K" in out
    assert document["models"]["dpo"]["AlpacaEval win rate"] == 61.0
    assert "AlpacaEval win rate" not in document["models"]["base"]  # base was not compared: no number, shown as -
    assert (tmp_path / "s.png").stat().st_size > 1000
    as_json = show.main(["--model_paths", str(tmp_path / "dpo"), "--format", "json"])
    assert json.loads(capsys.readouterr().out) == as_json
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match=r"bad\.json: not a chatalign eval summary"):
        show.main(["--summary_files", str(bad)])
    with pytest.raises(FileNotFoundError, match="no summaries"):
        show.main(["--model_paths", str(tmp_path / "nothing")])
