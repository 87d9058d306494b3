"""run_sft on the tiny model: training, masks, packing/padding-free exactness, overflow counts, resume, 2 processes."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from conftest import REPO, load_script
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatalign.data.mixer import mix_datasets
from chatalign.data.rendering import IGNORE_INDEX
from chatalign.store import prompt_id
from chatalign.train.run import with_prompt_ids
from chatalign.train.sft import tokenize_sft

SFT_DATA = {
    str(REPO / "data/llama_factory_demo/alpaca_en_demo.json"): 0.04,
    str(REPO / "data/tora_math_code/examples.jsonl"): 0.5,
}


def write_recipe(tmp_path, model_dir, **overrides):
    recipe = {
        "model_name_or_path": str(model_dir),
        "dataset_mixer": SFT_DATA,
        "dataset_splits": ["train"],
        "max_length": 128,
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "max_steps": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "learning_rate": 1e-3,
        "bf16": False,
        "use_cpu": True,
        "activation_checkpointing": False,
        "report_to": "none",
        "seed": 7,
        "dataloader_num_workers": 0,
    }
    recipe.update(overrides)
    path = tmp_path / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_full_sft_trains_saves_and_reloads(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir)
    load_script("run_sft").main([recipe])
    out = tmp_path / "out"
    before, after = weights(tiny_model_dir), weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter changed"
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    results = json.loads((out / "train_results.json").read_text())
    assert sum(results["data"]["train"].values()) == 39 + 15  # every mixed row is accounted for
    # train_data_ids.csv: one prompt_id per row trained on, in mixture order; rows without one get the store's id
    ids = (out / "train_data_ids.csv").read_text().splitlines()
    kept = results["data"]["train"].get("kept whole", 0) + results["data"]["train"].get("truncated to max_length", 0)
    mixed = with_prompt_ids(mix_datasets(SFT_DATA, "sft", splits=["train"], seed=7).train, "sft")
    assert ids[0] == "prompt_id" and len(ids) - 1 == kept and kept > 30
    remaining = iter(mixed["prompt_id"])
    assert all(any(pid == other for other in remaining) for pid in ids[1:])  # a subsequence: only drops removed
    alpaca = next(row for row in mixed if "alpaca" in row["source"])
    assert alpaca["prompt_id"] == prompt_id(alpaca["messages"][:-1])
    run_args = yaml.safe_load((out / "run_args.yaml").read_text())
    assert run_args["args"]["max_length"] == 128 and run_args["chatalign"]["script"]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and reloaded(torch.tensor([[1, 2, 3]])).logits.isfinite().all()


def test_lora_sft_saves_an_adapter(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir, use_peft=True, lora_r=4, lora_alpha=8,
                          lora_target_modules=["q_proj", "v_proj"], max_steps=2)
    load_script("run_sft").main([recipe])
    out = tmp_path / "out"
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_B" in k and adapter[k].abs().sum() > 0 for k in adapter), "LoRA B stayed zero: no training"
    assert not (out / "config.json").exists()  # a base config beside the adapter would break loading
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # base + adapter, as sample_checkpoints loads it
    assert reloaded(torch.tensor([[1, 2, 3]])).logits.isfinite().all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_4bit_on_cpu_fails_before_loading(tmp_path, tiny_model_dir, monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("the model was loaded before the check"))
    recipe = write_recipe(tmp_path, tiny_model_dir, load_in_4bit=True)
    with pytest.raises(ValueError, match="--load_in_4bit needs a CUDA GPU"):
        load_script("run_sft").main([recipe])


def math_chat():
    return [
        {"role": "system", "content": "Solve with code."},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "```python\nprint(2+3)\n```"},
        {"role": "user", "content": "```output\n5\n```"},
        {"role": "assistant", "content": "The answer is 5."},
    ]


def test_assistant_only_labels_mask_code_output_turns(tiny_tokenizer):
    ds = Dataset.from_list([{"messages": math_chat()}])
    tokenized, counts = tokenize_sft(ds, tiny_tokenizer, max_length=None)
    ids, labels = tokenized[0]["input_ids"], tokenized[0]["labels"]
    trained = tiny_tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX])
    assert trained == "```python\nprint(2+3)\n```<|im_end|>The answer is 5.<|im_end|>"
    masked = tiny_tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab == IGNORE_INDEX])
    assert "```output\n5\n```" in masked and "What is 2+3?" in masked and "Solve with code." in masked
    assert counts == {"kept whole": 1}


def test_overflow_truncate_or_drop_is_counted(tiny_tokenizer):
    long_answer = "word " * 200
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "short"}]},
        {"messages": [{"role": "user", "content": "tell"}, {"role": "assistant", "content": long_answer}]},
        {"messages": [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "late"}]},
    ]
    ds = Dataset.from_list(rows)
    truncated, counts = tokenize_sft(ds, tiny_tokenizer, max_length=64, overflow="truncate")
    assert counts == {"kept whole": 1, "truncated to max_length": 1,
                      "dropped: no assistant token within max_length": 1}
    assert [len(r) for r in truncated["input_ids"]][1] == 64
    dropped, counts = tokenize_sft(ds, tiny_tokenizer, max_length=64, overflow="drop")
    assert counts == {"kept whole": 1, "dropped: longer than max_length": 2} and len(dropped) == 1


def test_prepared_rows_are_cached_and_a_second_run_loads_them(tiny_tokenizer, tmp_path, monkeypatch, caplog):
    import chatalign.train.sft as sft

    rows = [{"messages": math_chat(), "prompt_id": "p0"},
            {"messages": [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "late"}],
             "prompt_id": "p1"}]
    kwargs = dict(max_length=128, keep_columns=("prompt_id",), cache_dir=str(tmp_path))
    first, counts = tokenize_sft(Dataset.from_list(rows), tiny_tokenizer, **kwargs)
    renders = []
    monkeypatch.setattr(sft, "render_conversations", lambda *a, **k: renders.append(a) or [])
    with caplog.at_level("INFO"):
        again, counts_again = tokenize_sft(Dataset.from_list(rows), tiny_tokenizer, **kwargs)
    assert renders == [] and "loaded 1 prepared rows" in caplog.text
    assert again.to_list() == first.to_list() and counts_again == counts
    assert counts == {"kept whole": 1, "dropped: no assistant token within max_length": 1}
    assert first["prompt_id"] == ["p0"]
    # Without the cache, or with other settings, the rows are rendered again.
    for other in ({"use_cache": False}, {"max_length": 127}):
        renders.clear()
        with pytest.raises(ValueError):  # the stub renders nothing, so no row survives
            tokenize_sft(Dataset.from_list(rows), tiny_tokenizer, **{**kwargs, **other})
        assert len(renders) == 1


def per_sequence_loss_sum(model, ids, labels):
    out = model(input_ids=torch.tensor([ids]), use_cache=False)
    logits = out.logits[0, :-1]
    target = torch.tensor(labels[1:])
    return torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum"), (
        target != IGNORE_INDEX).sum()


def test_padding_free_and_padded_losses_equal_one_at_a_time(tiny_model_dir, tiny_tokenizer):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    chats = [math_chat(), [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
             [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}]]
    rows = [dict(zip(("input_ids", "labels"), tokenize_sft(Dataset.from_list([{"messages": c}]), tiny_tokenizer,
                                                           None)[0][0].values(), strict=True)) for c in chats]
    total, count = zip(*(per_sequence_loss_sum(model, r["input_ids"], r["labels"]) for r in rows), strict=True)
    one_at_a_time = sum(total) / sum(count)

    for padding_free in (True, False):
        collator = DataCollatorForLanguageModeling(pad_token_id=tiny_tokenizer.pad_token_id,
                                                   padding_free=padding_free)
        batch = collator(rows)
        with torch.no_grad():
            loss = model(**batch, use_cache=False).loss
        assert loss.item() == pytest.approx(one_at_a_time.item(), abs=1e-5), f"padding_free={padding_free}"


def test_flattened_batch_under_sdpa_needs_restarting_positions_and_no_cache(tiny_model_dir, tiny_tokenizer):
    """transformers 5 finds packed sequences from position_ids only without a cache and without an attention mask."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    first, second = [5, 30, 31, 32, 33, 6], [5, 40, 41, 42, 6]
    flat = torch.tensor([first + second])
    restart = torch.tensor([list(range(len(first))) + list(range(len(second)))])
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([second]), use_cache=False).logits[0]
        isolated = model(input_ids=flat, position_ids=restart, use_cache=False).logits[0, len(first):]
        leaked = model(input_ids=flat, position_ids=restart, use_cache=True).logits[0, len(first):]
        no_positions = model(input_ids=flat, use_cache=False).logits[0, len(first):]
    assert torch.allclose(isolated, alone, atol=1e-5)
    assert not torch.allclose(leaked, alone, atol=1e-3), "with a cache the second sequence sees the first"
    assert not torch.allclose(no_positions, alone, atol=1e-3)


def test_packing_trains(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir, packing=True, padding_free=False, max_steps=2)
    trainer = load_script("run_sft").main([recipe])
    assert trainer.state.global_step == 2
    assert "seq_lengths" in trainer.train_dataset.column_names  # best-fit packing kept sequence boundaries


def test_resample_each_epoch_trains_on_new_subsets(tmp_path, tiny_model_dir, monkeypatch):
    from trl import SFTTrainer

    seen: dict[int, list[int]] = {}  # epoch -> lengths of the sequences its batches held
    original = SFTTrainer.training_step

    def recording_step(self, model, inputs, *args, **kwargs):
        starts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist() + [inputs["position_ids"].shape[1]]
        seen.setdefault(int(self.state.epoch), []).extend(b - a for a, b in zip(starts, starts[1:], strict=False))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", recording_step)
    recipe = write_recipe(tmp_path, tiny_model_dir, resample_each_epoch=True, max_steps=-1, num_train_epochs=2,
                          per_device_train_batch_size=16, padding_free=True)
    trainer = load_script("run_sft").main([recipe])
    dataset = trainer.train_dataset
    assert dataset.epoch == 1  # the callback moved it to the second epoch's draw
    # Each epoch trained on exactly its own draw: the rendered lengths of the rows drawn for it.
    for epoch in (0, 1):
        drawn = [len(dataset.pool[int(i)]["input_ids"]) for i in dataset.epoch_indices(epoch)]
        assert sorted(seen[epoch]) == sorted(drawn)
    assert sorted(seen[0]) != sorted(seen[1])
    assert dataset.counts_per_source(0) == dataset.counts_per_source(1)  # same sizes per source, other rows
    # padding-free hands TRL max_length=None; run_args.yaml still records the recipe's 128
    assert yaml.safe_load((tmp_path / "out/run_args.yaml").read_text())["args"]["max_length"] == 128
    assert not (dataset.epoch_indices(0) == dataset.epoch_indices(1)).all()
    # every epoch's own draw is recorded, with the epoch that drew it
    rows = (tmp_path / "out/train_data_ids.csv").read_text().splitlines()
    assert rows[0] == "prompt_id,epoch"
    assert [int(r.rsplit(",", 1)[1]) for r in rows[1:]] == [0] * len(dataset) + [1] * len(dataset)


def run_sft_subprocess(recipe, *extra, env_extra=None, launcher=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    env.update(env_extra or {})
    cmd = (launcher or [sys.executable]) + [str(REPO / "scripts/run_sft.py"), recipe, *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_model_dir):
    common = dict(max_steps=6, save_strategy="steps", save_steps=2, per_device_train_batch_size=2,
                  learning_rate=3e-3)
    straight = write_recipe(tmp_path / "a", tiny_model_dir, **common)
    resumed = write_recipe(tmp_path / "b", tiny_model_dir, **common)
    assert run_sft_subprocess(straight).returncode == 0

    killer = str(REPO / "tests/helpers/kill_after_checkpoint")
    killed = run_sft_subprocess(resumed, env_extra={"CHATALIGN_KILL_AFTER_STEP": "4",
                                                    "PYTHONPATH": os.pathsep.join([killer, str(REPO / "src")])})
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert not (tmp_path / "b/out/model.safetensors").exists() and (tmp_path / "b/out/checkpoint-4").is_dir()
    again = run_sft_subprocess(resumed, "--resume_from_checkpoint=true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout + again.stderr

    def losses(run):
        history = json.loads((tmp_path / run / "out/trainer_state.json").read_text())["log_history"]
        return {h["step"]: h["loss"] for h in history if "loss" in h}

    a, b = losses("a"), losses("b")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), f"loss differs at step {step}"
    wa, wb = weights(tmp_path / "a/out"), weights(tmp_path / "b/out")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_two_processes_on_cpu(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir, max_steps=3, per_device_train_batch_size=2, ddp_backend="gloo")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    proc = run_sft_subprocess(recipe, launcher=launcher, env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "out/trainer_state.json").read_text())
    assert state["global_step"] == 3
    # 2 processes x 2 rows: each optimizer step saw 4 rows, so 3 steps cover 3 / ceil(ceil(N / 2) / 2) of an epoch
    # (the distributed sampler gives each process ceil(N / 2) rows); one process would cover 3 / ceil(N / 2).
    rows = len((tmp_path / "out/train_data_ids.csv").read_text().splitlines()) - 1
    assert state["train_batch_size"] == 2 and rows > 20
    assert state["epoch"] == pytest.approx(3 / math.ceil(math.ceil(rows / 2) / 2))
    assert state["epoch"] != pytest.approx(3 / math.ceil(rows / 2))
    assert (tmp_path / "out/model.safetensors").is_file()
    assert textwrap.dedent(proc.stdout).count("done:") == 1  # only the main process reports


def test_tensorboard_and_offline_wandb_tracking(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "chatalign-test")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    recipe = write_recipe(tmp_path, tiny_model_dir, max_steps=2, report_to=["tensorboard", "wandb"])
    load_script("run_sft").main([recipe])
    out = tmp_path / "out"
    assert list((out / "runs").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    run = yaml.safe_load((out / "run_args.yaml").read_text())["chatalign"]["wandb"]
    assert run and run["id"] and run["project"] == "chatalign-test"
    assert list(tmp_path.rglob(f"offline-run-*-{run['id']}")), "no offline wandb run folder with that id"
    import wandb

    wandb.finish()


def test_completion_only_loss_for_prompt_completion_data(tmp_path, tiny_model_dir, tiny_tokenizer):
    rows = [{"prompt": f"Add {i} and {i}.", "completion": f"{i} + {i} = {2 * i}."} for i in range(12)]
    data = tmp_path / "pc.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recipe = write_recipe(tmp_path, tiny_model_dir, dataset_mixer={str(data): 1.0}, max_steps=1)
    trainer = load_script("run_sft").main([recipe])
    first = trainer.train_dataset[0]
    trained = tiny_tokenizer.decode([t for t, lab in zip(first["input_ids"], first["labels"], strict=True)
                                     if lab != IGNORE_INDEX])
    assert trained.endswith("<|im_end|>") and trained.removesuffix("<|im_end|>") in {r["completion"] for r in rows}


def test_checkpoint_keeps_the_template_and_its_stop_tokens(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir, max_steps=1, chat_template="llama-3")
    load_script("run_sft").main([recipe])
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert "<|start_header_id|>" in tok.chat_template
    generation = json.loads((tmp_path / "out/generation_config.json").read_text())
    assert tok.convert_tokens_to_ids("<|eot_id|>") in generation["eos_token_id"]


def test_sample_checkpoints_side_by_side(tmp_path, tiny_model_dir, capsys):
    out_file = tmp_path / "samples.json"
    samples = load_script("sample_checkpoints").main([
        "--model_paths", str(tiny_model_dir), str(tiny_model_dir), "--prompts", "Say hi.", "Name a color.",
        "--max_new_tokens=4", "--chat_template=chatml.json", f"--output_file={out_file}"])
    printed = capsys.readouterr().out
    assert "### Say hi." in printed and "### Name a color." in printed
    rows = json.loads(out_file.read_text())
    assert [r["prompt"] for r in rows] == ["Say hi.", "Name a color."]
    # the same checkpoint twice, greedy: identical columns
    assert samples[str(tiny_model_dir)] == [r[str(tiny_model_dir)] for r in rows]


def test_unsupported_truncation_mode_is_refused_before_loading(tmp_path):
    recipe = write_recipe(tmp_path, tmp_path / "no-such-model", truncation_mode="keep_end")
    with pytest.raises(ValueError, match="truncation_mode='keep_end': run_sft keeps the start"):
        load_script("run_sft").main([recipe])


def sft_parse(tmp_path, **keys):
    from chatalign.configs import ChatalignParser
    from chatalign.train.sft import check_sft_arguments

    script = load_script("run_sft")
    parser: ChatalignParser = script.make_parser()
    model_args, data_args, training_args, script_args = parser.parse([write_recipe(tmp_path, tmp_path / "m", **keys)])
    check_sft_arguments(training_args, data_args, script_args, parser.sources)
    return data_args, training_args, script_args


@pytest.mark.parametrize("keys, message", [
    ({"eos_token": "<|im_end|>"}, "key 'eos_token' in '.*recipe.yaml': TRL's eos_token has no effect in run_sft"),
    ({"dataset_text_field": "text"}, "key 'dataset_text_field' in '.*recipe.yaml': TRL's dataset_text_field has no "
                                     "effect"),
    ({"chat_template": "chatml", "chat_template_path": "zephyr"}, r"chat_template \('chatml'\) and chat_template_path "
                                                                  r"\('zephyr'\) name two templates"),
    ({"assistant_only_loss": True, "mask_user_labels": False}, "assistant_only_loss=True in '.*recipe.yaml' "
                                                               "contradicts mask_user_labels=False"),
    ({"resample_each_epoch": True, "overflow": "drop"}, "resample_each_epoch with overflow: drop"),
    ({"resample_each_epoch": True, "packing": True}, "resample_each_epoch with packing"),
])
def test_trl_keys_run_sft_would_ignore_are_refused_before_loading(tmp_path, keys, message):
    from chatalign.configs import ConfigError

    with pytest.raises(ConfigError, match=message):
        sft_parse(tmp_path, **keys)
    with pytest.raises(ConfigError, match=message):  # the script says so before it looks for the model
        load_script("run_sft").main([write_recipe(tmp_path, tmp_path / "no-such-model", **keys)])


def test_trl_loss_and_template_keys_map_onto_chatalign(tmp_path):
    data_args, training_args, script_args = sft_parse(tmp_path, chat_template_path="zephyr")
    assert data_args.chat_template == "zephyr" and training_args.chat_template_path is None
    assert script_args.mask_user_labels and not training_args.assistant_only_loss
    for key in ("assistant_only_loss", "completion_only_loss"):
        _, training_args, script_args = sft_parse(tmp_path, **{key: False})
        assert script_args.mask_user_labels is False
        assert (training_args.assistant_only_loss, training_args.completion_only_loss) == (False, None)
        assert sft_parse(tmp_path, **{key: True})[2].mask_user_labels is True


def test_mask_user_labels_false_trains_on_every_token(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir, max_steps=1, assistant_only_loss=False,
                          chat_template_path=str(REPO / "chat_templates/zephyr.jinja"))
    trainer = load_script("run_sft").main([recipe])
    rows = trainer.train_dataset
    assert all(row["labels"] == row["input_ids"] for row in rows)  # nothing masked
    zephyr = (REPO / "chat_templates/zephyr.jinja").read_text()
    assert AutoTokenizer.from_pretrained(tmp_path / "out").chat_template == zephyr  # trained with, saved with
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = zephyr
    masked, _ = tokenize_sft(Dataset.from_list([{"messages": [{"role": "user", "content": "hi"},
                                                              {"role": "assistant", "content": "hello"}]}]), tok, 64)
    assert IGNORE_INDEX in masked[0]["labels"]  # the default masks the user turn


def test_no_secret_reaches_any_file_of_a_run(tmp_path, tiny_model_dir, monkeypatch):
    """hub_token on the command line and keys in the environment: grep every file the run wrote, checkpoints and the
    pickled training_args.bin included."""
    monkeypatch.setenv("HF_TOKEN", "hf_placeholder")  # restored afterwards: the run moves its token here
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ENVSECRET-7781")
    monkeypatch.setenv("WANDB_API_KEY", "wandb-ENVSECRET-5512")
    secret = "hf_CLISECRET_0042"
    recipe = write_recipe(tmp_path, tiny_model_dir, max_steps=2, save_strategy="steps", save_steps=1)
    monkeypatch.setattr("sys.argv", ["run_sft.py", recipe, f"--hub_token={secret}"])
    trainer = load_script("run_sft").main([recipe, f"--hub_token={secret}"])
    assert trainer.args.hub_token is None and os.environ["HF_TOKEN"] == secret  # huggingface_hub still finds it
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any("checkpoint-2" in str(p) for p in files)
    for needle in (secret, "ENVSECRET"):
        assert [str(p) for p in files if needle.encode() in p.read_bytes()] == []
