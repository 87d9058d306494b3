"""The self-play data pipeline: reformat -> generate (fractions, merge, resume) -> convert (kto/dpo/spin) -> run_kto
nnPU, on the shipped data and the tiny model; the slow tier runs recipes/smollm2-135m/selfplay/run_selfplay.sh."""

import hashlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, load_script

from chatalign.data.mixer import mix_datasets
from chatalign.store import prompt_id
from chatalign.synth.selfplay import fraction_items, merge_fractions, reformat_source
from chatalign.train.kto import pair_real_generated


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def read_split(folder: Path, split: str) -> list[dict]:
    frame = pd.read_parquet(folder / f"{split}.parquet")
    return [{k: (list(map(dict, v)) if k == "prompt" else v) for k, v in row.items()} for row in
            frame.to_dict("records")]


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


@pytest.fixture(scope="module")
def alpaca_synthetic(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("alpaca_synthetic")
    load_script("reformat").main(["--data", str(data_dir / "llama_factory_demo" / "alpaca_en_demo.json"),
                                  "--output_dir", str(out)])
    return out


def test_reformat_alpaca_demo_gives_first_exchange_prompts_with_stable_unique_ids(alpaca_synthetic, data_dir):
    raw = json.loads((data_dir / "llama_factory_demo" / "alpaca_en_demo.json").read_text())
    train, test = read_split(alpaca_synthetic, "train"), read_split(alpaca_synthetic, "test")
    # 999 rows, 14 repeat an earlier (instruction, input): 985 prompts, 10% (ceil) carved off as the test split.
    assert (len(train), len(test)) == (886, 99)
    assert sorted(pd.read_parquet(alpaca_synthetic / "train.parquet").columns) == ["prompt", "prompt_id", "real"]
    rows = {r["prompt_id"]: r for r in train + test}
    assert len(rows) == 985  # unique across both splits: no test prompt is also a train prompt

    crepes = rows[sha("Describe a process of making crepes.")]  # row 0, no input: the instruction alone
    assert crepes["prompt"] == [user("Describe a process of making crepes.")]
    assert crepes["real"] == raw[0]["output"]
    with_input = next(r for r in raw if r["input"])  # instruction and input joined by a blank line
    text = with_input["instruction"] + "\n\n" + with_input["input"]
    assert rows[sha(text)]["prompt"] == [user(text)] and rows[sha(text)]["real"] == with_input["output"]
    assert all(r["prompt_id"] == sha(r["prompt"][0]["content"]) and len(r["prompt"]) == 1 for r in rows.values())

    # Stable: a second run writes the same rows in the same order (same seeded test split).
    again = load_script("reformat").main(["--data", str(data_dir / "llama_factory_demo" / "alpaca_en_demo.json"),
                                          "--output_dir", str(alpaca_synthetic.parent / "alpaca_again")])
    assert read_split(again["train"].parent, "train") == train and read_split(again["test"].parent, "test") == test


def test_reformat_tora_reads_whole_trajectories(tmp_path, data_dir):
    source = data_dir / "tora_math_code" / "examples.jsonl"
    written = load_script("reformat").main(["--data", str(source), "--output_dir", str(tmp_path), "--test_size", "6",
                                            "--output_format", "jsonl"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.jsonl", "train.jsonl"]
    rows = [json.loads(line) for split in ("train", "test") for line in written[split].read_text().splitlines()]
    assert (line_count(written["train"]), line_count(written["test"])) == (24, 6)
    raw = {r["messages"][0]["content"]: r["messages"][1]["content"]
           for r in map(json.loads, source.read_text().splitlines())}
    # The real answer is the whole assistant turn, code *and* its output blocks (math_code would cut at ```output).
    assert {r["prompt"][0]["content"]: r["real"] for r in rows} == raw
    assert sum("```output" in r["real"] for r in rows) == 25  # the 25 trajectories that ran code (5 are plain CoT)


def test_reformat_ultrachat_shaped_source_keeps_first_exchange_and_its_ids(tmp_path):
    """UltraChat-200k's columns and split names (train_sft, test_sft), as a local folder."""
    folder = tmp_path / "ultrachat"
    folder.mkdir()
    system = {"role": "system", "content": "Be brief."}

    def chat(prompt_id, messages):
        return {"prompt": next(m["content"] for m in messages if m["role"] == "user"), "prompt_id": prompt_id,
                "messages": messages}

    train = [
        chat("p1", [system, user("Hi"), assistant("Hello."), user("And?"), assistant("Bye.")]),
        chat("p2", [user("2+2?"), assistant("4")]),
        chat("p2", [user("2+2?"), assistant("four")]),  # the same prompt again: dropped
    ]
    test = [
        chat("p3", [user("3+3?"), assistant("6")]),
        chat("p2", [user("2+2?"), assistant("4")]),  # also a train prompt: dropped from test
    ]
    for name, rows in (("train_sft.jsonl", train), ("test_sft.jsonl", test)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits, counts = reformat_source(str(folder), train_split="train_sft", test_split="test_sft")
    assert splits["train"] == [{"prompt_id": "p1", "prompt": [system, user("Hi")], "real": "Hello."},
                               {"prompt_id": "p2", "prompt": [user("2+2?")], "real": "4"}]
    assert splits["test"] == [{"prompt_id": "p3", "prompt": [user("3+3?")], "real": "6"}]
    assert counts["train"]["later turns dropped"] == 1 and counts["train"]["duplicate prompt"] == 1
    assert counts["test"]["dropped: also a train prompt"] == 1
    # Without a source id the id hashes the whole prompt, so the system message changes it.
    assert prompt_id([system, user("Hi")]) != prompt_id([user("Hi")]) == sha("Hi")


def test_fraction_items_cut_one_seeded_order():
    prompts = [{"prompt_id": f"p{i}", "prompt": [user(f"q{i}")], "real": f"a{i}"} for i in range(10)]
    full = fraction_items(prompts, 0, 0, shuffle_seed=42)
    parts = [fraction_items(prompts, k, 4, shuffle_seed=42) for k in range(3)]
    assert [len(p) for p in parts] == [4, 4, 2]
    assert [i for p in parts for i in p] == full  # fractions are consecutive slices of the full order
    assert [i["shuffle"]["index"] for i in full] == list(range(10)) and {i["shuffle"]["of"] for i in full} == {10}
    assert [i["id"] for i in full] != [f"p{i}" for i in range(10)]  # shuffled
    assert [i["id"] for i in fraction_items(prompts, 0, 0, shuffle_seed=1)] != [i["id"] for i in full]
    # The order depends on (seed, prompt_id) only, not on the row order of the prompt file.
    assert fraction_items(prompts[::-1], 1, 4, shuffle_seed=42) == parts[1]
    with pytest.raises(ValueError, match=r"data_frac 3 is past the end: 10 prompts make 3 fraction\(s\) of 4"):
        fraction_items(prompts, 3, 4, shuffle_seed=42)
    with pytest.raises(ValueError, match="data_frac must be 0"):
        fraction_items(prompts, 1, 0, shuffle_seed=42)


@pytest.fixture(scope="module")
def small_synthetic(tmp_path_factory, data_dir):
    """Reformatted prompts of 10 real alpaca rows: 8 train, 2 test."""
    root = tmp_path_factory.mktemp("small")
    rows = json.loads((data_dir / "llama_factory_demo" / "alpaca_en_demo.json").read_text())[:10]
    (root / "alpaca10.json").write_text(json.dumps(rows))
    load_script("reformat").main(["--data", str(root / "alpaca10.json"), "--output_dir", str(root / "synthetic"),
                                  "--test_size", "2"])
    return root / "synthetic"


def generate_args(model, input_dir, output_dir, *extra):
    # Greedy with one prompt per batch: a prompt's completion does not depend on which fraction it was in.
    return ["--model", str(model), "--input_dir", str(input_dir), "--output_dir", str(output_dir), "--split", "train",
            "--temperature", "0", "--max_tokens", "8", "--backend", "transformers", "--gen_batch_size", "1", *extra]


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tiny_model_dir, small_synthetic):
    """The 8 train prompts generated as two fractions of 4 (iter0) and as one full run (full)."""
    root = tmp_path_factory.mktemp("generated")
    script = load_script("generate")
    for k in (0, 1):
        script.main(generate_args(tiny_model_dir, small_synthetic, root / "iter0", "--data_frac", str(k),
                                  "--frac_len", "4"))
    script.main(generate_args(tiny_model_dir, small_synthetic, root / "full", "--frac_len", "0"))
    return root


def test_two_fractions_merge_to_the_full_run(generated, small_synthetic, tiny_model_dir):
    files = sorted(p.name for p in (generated / "iter0").iterdir())
    assert files == ["train_frac0.jsonl", "train_frac1.jsonl"]
    assert [line_count(generated / "iter0" / f) for f in files] == [4, 4]
    merged = merge_fractions(generated / "iter0", "train")
    full = merge_fractions(generated / "full", "train")
    assert (generated / "full" / "train_frac0.jsonl").is_file() and line_count(generated / "full" /
                                                                                 "train_frac0.jsonl") == 8
    assert merged == full and len({r["id"] for r in merged}) == 8  # the same rows, no duplicates
    prompts = {r["prompt_id"]: r for r in read_split(small_synthetic, "train")}
    assert {r["id"] for r in merged} == set(prompts)
    for row in merged:
        assert row["messages"] == prompts[row["id"]]["prompt"] and row["real"] == prompts[row["id"]]["real"]
        assert len(row["completions"]) == 1 and isinstance(row["completions"][0], str)
        assert row["generator"]["model"] == str(tiny_model_dir) and row["generator"]["backend"] == "transformers"
        assert row["generator"]["params"]["max_tokens"] == 8 and row["generator"]["params"]["temperature"] == 0.0


def test_generate_rerun_adds_nothing(generated, small_synthetic, tiny_model_dir):
    path = generated / "iter0" / "train_frac1.jsonl"
    before = path.read_text()
    rows = load_script("generate").main(generate_args(tiny_model_dir, small_synthetic, generated / "iter0",
                                                      "--data_frac", "1", "--frac_len", "4"))
    assert path.read_text() == before and len(rows) == 4
    assert [r["id"] for r in rows] == [json.loads(line)["id"] for line in before.splitlines()]


def test_merge_rejects_fractions_of_different_runs(generated, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(generated / "iter0", folder)
    rows = [json.loads(line) for line in (folder / "train_frac0.jsonl").read_text().splitlines()]
    other = dict(rows[0], completions=["something else"])
    (folder / "train_frac7.jsonl").write_text(json.dumps(other) + "\n")
    with pytest.raises(ValueError, match=rf"prompt_id {rows[0]['id']}: '.*train_frac0.jsonl' and "
                                         r"'.*train_frac7.jsonl' disagree on completions"):
        merge_fractions(folder, "train")
    (folder / "train_frac7.jsonl").write_text(json.dumps(rows[0]) + "\n")  # an identical duplicate merges
    assert len(merge_fractions(folder, "train")) == 8
    reshuffled = dict(rows[0], id="new", shuffle={"seed": 1, "index": 0, "of": 8})
    (folder / "train_frac7.jsonl").write_text(json.dumps(reshuffled) + "\n")
    with pytest.raises(ValueError, match="different shuffles"):
        merge_fractions(folder, "train")
    with pytest.raises(FileNotFoundError, match="no generated 'test' fractions"):
        merge_fractions(folder, "test")


def generated_row(prompt_id, question, real, completions, index):
    return {"id": prompt_id, "messages": [user(question)], "real": real,
            "shuffle": {"seed": 42, "index": index, "of": 5}, "completions": completions,
            "generator": {"model": "m", "backend": "transformers", "params": {}}}


@pytest.fixture
def handmade_generations(tmp_path):
    """Four prompts over two fraction files: a plain pair, two completions, an empty one, one equal to the real."""
    folder = tmp_path / "iter0"
    folder.mkdir()
    rows = [generated_row("a", "Qa", "Ra", ["Ga"], 0), generated_row("b", "Qb", "Rb", ["Gb1", "Gb2"], 1),
            generated_row("c", "Qc", "Rc", ["  "], 2), generated_row("d", "Qd", "Rd", ["Rd"], 3)]
    (folder / "train_frac1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[2:]))
    (folder / "train_frac0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return folder


def convert(folder, fmt, split="train"):
    return load_script("convert_data").main(["--input_dir", str(folder), "--split", split, "--format", fmt])


def test_convert_kto_writes_unpaired_rows_that_pair_per_prompt(handmade_generations):
    path = convert(handmade_generations, "kto")
    assert path == handmade_generations / "kto" / "train.parquet"
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["prompt", "completion", "label", "prompt_id"]
    got = [(r["prompt_id"], r["completion"][0]["content"], r["label"]) for r in frame.to_dict("records")]
    # One (real True, generated False) pair per non-empty completion; the empty one drops its pair; a generation
    # equal to the real answer stays (an unlabelled row that is in fact positive).
    assert got == [("a", "Ra", True), ("a", "Ga", False), ("b", "Rb", True), ("b", "Gb1", False),
                   ("b", "Rb", True), ("b", "Gb2", False), ("d", "Rd", True), ("d", "Rd", False)]
    assert all(list(map(dict, r["prompt"])) == [user("Q" + r["prompt_id"])] for r in frame.to_dict("records"))

    mixed = mix_datasets({str(path.parent): 1.0}, schema="unpaired", splits=["train"], seed=3)
    assert len(mixed.train) == 8 and sum(mixed.train["label"]) == 4
    paired, counts = pair_real_generated(mixed.train, seed=3)
    assert counts == {"pairs": 4} and paired["label"] == [True, False] * 4
    assert all(paired[i]["prompt_id"] == paired[i + 1]["prompt_id"] for i in range(0, 8, 2))


@pytest.mark.parametrize("fmt", ["dpo", "spin"])
def test_convert_preference_formats(handmade_generations, fmt):
    path = convert(handmade_generations, fmt)
    assert path == handmade_generations / fmt / "train.parquet"
    frame = pd.read_parquet(path)
    columns = ["prompt", "chosen", "rejected", "prompt_id"] + (["real", "generated"] if fmt == "spin" else [])
    assert list(frame.columns) == columns
    records = frame.to_dict("records")
    got = [(r["prompt_id"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in records]
    assert got == [("a", "Ra", "Ga"), ("b", "Rb", "Gb1"), ("b", "Rb", "Gb2")]  # empty and identical dropped
    if fmt == "spin":
        first = records[0]
        assert list(map(dict, first["real"])) == [user("Qa"), assistant("Ra")]
        assert list(map(dict, first["generated"])) == [user("Qa"), assistant("Ga")]
    mixed = mix_datasets({str(path.parent): 1.0}, schema="preference", splits=["train"], seed=3)
    assert len(mixed.train) == 3 and sorted(mixed.train["prompt_id"]) == ["a", "b", "b"]


def test_convert_needs_generations(tmp_path):
    with pytest.raises(FileNotFoundError, match="run scripts/generate.py first"):
        convert(tmp_path, "kto")


def test_run_kto_nnpu_trains_on_converted_generations(generated, tiny_model_dir, tmp_path):
    kto_dir = convert(generated / "iter0", "kto").parent
    out = tmp_path / "kto_out"
    recipe = tmp_path / "selfplay.yaml"
    settings = yaml.safe_load((REPO / "recipes/smollm2-135m/kto/config_selfplay.yaml").read_text())
    settings.update(model_name_or_path=str(tiny_model_dir), dataset_mixer={str(kto_dir): 1.0}, output_dir=str(out),
                    learning_rate=1e-3, dataset_num_proc=None)
    recipe.write_text(yaml.safe_dump(settings))
    trainer = load_script("run_kto").main([str(recipe)])
    assert settings["kto_variant"] == "nnpu" and trainer.state.global_step == 2
    assert trainer.train_dataset["label"] == [True, False] * 8  # 8 prompts -> 8 whole (real, generated) pairs
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(0.5)  # step 1, policy == reference: U- = 1/2, P+ = P- (see test_kto)
    results = json.loads((out / "train_results.json").read_text())
    assert results["data"]["train"]["pairs"] == 8 and (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_run_selfplay_smollm2_two_iterations(smollm2_dir, tmp_path):
    env = dict(os.environ, BASE=str(smollm2_dir), OUT_ROOT=str(tmp_path), ITERS="2", NUM_PROMPTS="4",
               MAX_TOKENS="16", PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    script = REPO / "recipes/smollm2-135m/selfplay/run_selfplay.sh"
    proc = subprocess.run(["bash", str(script), "--report_to=none"], env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    gen = tmp_path / "generated" / "smollm2-135m"
    assert (gen / "synthetic" / "train.parquet").is_file()
    models = [str(smollm2_dir), str(tmp_path / "outputs" / "smollm2-135m-selfplay-iter0")]
    for n, model in enumerate(models):
        rows = merge_fractions(gen / f"iter{n}", "train")
        assert len(rows) == 4 and {r["generator"]["model"] for r in rows} == {model}  # iteration n-1's model
        assert len(pd.read_parquet(gen / f"iter{n}" / "kto" / "train.parquet")) == 8
        out = tmp_path / "outputs" / f"smollm2-135m-selfplay-iter{n}"
        results = json.loads((out / "train_results.json").read_text())
        assert math.isfinite(results["train_loss"]) and results["data"]["train"]["pairs"] == 4
        assert (out / "model.safetensors").is_file()
        run_args = yaml.safe_load((out / "run_args.yaml").read_text())["args"]
        assert run_args["model_name_or_path"] == model and run_args["kto_variant"] == "nnpu"
    # the same prompts every iteration, answered by a different model
    assert [r["id"] for r in merge_fractions(gen / "iter0", "train")] == \
        [r["id"] for r in merge_fractions(gen / "iter1", "train")]
