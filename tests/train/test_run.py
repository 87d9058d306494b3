"""chatalign.train.run: what every training run shares (the recipe's data mixture and its empty system messages)."""

import json

import pytest
import yaml
from conftest import REPO, load_script

from chatalign.configs import ConfigError, write_run_args
from chatalign.data.arguments import DataArguments
from chatalign.data.templates import resolve_chat_template
from chatalign.train.run import load_mixture, resolve_resume_checkpoint

ZEPHYR = resolve_chat_template("zephyr").template
NO_SYSTEM = "{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}"


@pytest.fixture
def pref_and_sft_files(tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"q{i}"}],
                                         "chosen": [{"role": "assistant", "content": "yes"}],
                                         "rejected": [{"role": "assistant", "content": "no"}]}) + "\n"
                             for i in range(3)))
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in (
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "yo"}])))
    return prefs, sft


@pytest.mark.parametrize("template, inserted", [(ZEPHYR, True), (NO_SYSTEM, False)], ids=["zephyr", "no-system"])
def test_auto_insert_empty_system_msg(pref_and_sft_files, tok, template, inserted):
    prefs, sft = pref_and_sft_files
    tok.chat_template = template
    empty = {"role": "system", "content": ""}
    args = DataArguments(dataset_mixer={str(prefs): 1.0}, dataset_splits=["train"], auto_insert_empty_system_msg=True)
    prompts = load_mixture(args, "preference", 0, tok).train["prompt"]
    assert [p[0] == empty for p in prompts] == [inserted] * 3
    assert all(p[-1]["role"] == "user" for p in prompts)
    args = DataArguments(dataset_mixer={str(sft): 1.0}, dataset_splits=["train"], auto_insert_empty_system_msg=True)
    chats = {chat[-1]["content"]: chat for chat in load_mixture(args, "sft", 0, tok).train["messages"]}
    assert chats["hello"][0] == (empty if inserted else {"role": "user", "content": "hi"})
    assert chats["yo"][0] == {"role": "system", "content": "Be brief."} and len(chats["yo"]) == 3  # has one: kept
    off = DataArguments(dataset_mixer={str(prefs): 1.0}, dataset_splits=["train"])
    assert all(p[0]["role"] == "user" for p in load_mixture(off, "preference", 0, tok).train["prompt"])


A_DATA = str(REPO / "data/llama_factory_demo/alpaca_en_demo.json")
B_DATA = str(REPO / "data/tora_math_code/examples.jsonl")


def parsed_sft(recipe_dir, output_dir, **keys):
    recipe = {"model_name_or_path": str(recipe_dir / "model"), "dataset_mixer": {A_DATA: 1.0},
              "output_dir": str(output_dir), "use_cpu": True, "bf16": False, "activation_checkpointing": False, **keys}
    path = recipe_dir / f"recipe-{len(list(recipe_dir.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    (recipe_dir / "model").mkdir(exist_ok=True)  # exists: the checks below come before any model is read
    script = load_script("run_sft")
    return script, str(path), script.make_parser().parse([str(path)])


def test_another_runs_checkpoints_are_refused_moved_aside_or_resumed_only_by_their_run(tmp_path):
    out = tmp_path / "out"
    _, _, first = parsed_sft(tmp_path, out)
    write_run_args(out, first)
    (out / "checkpoint-4").mkdir()
    (out / "checkpoint-4" / "trainer_state.json").write_text("{}")
    script, recipe, same = parsed_sft(tmp_path, out, max_steps=10, eval_strategy="no")  # the same run, resumed
    assert resolve_resume_checkpoint(same[2], same) is None
    resumed = parsed_sft(tmp_path, out, resume_from_checkpoint="true")[2]
    assert resolve_resume_checkpoint(resumed[2], resumed) == str(out / "checkpoint-4")

    script, recipe, other = parsed_sft(tmp_path, out, dataset_mixer={B_DATA: 1.0}, seed=3)
    with pytest.raises(ConfigError, match=r"holds checkpoints of another run \(dataset_mixer: \{'.*alpaca_en_demo.json': "
                                          r"1.0\} -> \{'.*examples.jsonl': 1.0\}; seed: 42 -> 3\); use another "
                                          r"output_dir, or set overwrite_output_dir: true"):
        resolve_resume_checkpoint(other[2], other)
    with pytest.raises(ConfigError, match="holds checkpoints of another run"):  # the script says so before loading
        script.main([recipe])
    _, _, other_resumed = parsed_sft(tmp_path, out, dataset_mixer={B_DATA: 1.0}, resume_from_checkpoint="true",
                                     overwrite_output_dir=True)
    with pytest.raises(ConfigError, match="resuming would continue that run, not this one"):
        resolve_resume_checkpoint(other_resumed[2], other_resumed, overwrite_output_dir=True)
    assert resolve_resume_checkpoint(other[2], other, overwrite_output_dir=True) is None
    (aside,) = out.glob("previous-run-*")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-4", "run_args.yaml"]  # moved, never deleted
    assert not list(out.glob("checkpoint-*"))


def test_checkpoints_without_run_args_are_another_runs(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    _, _, configs = parsed_sft(tmp_path, out, resume_from_checkpoint="true")
    with pytest.raises(ConfigError, match=r"another run \(no run_args.yaml says which run wrote them\)"):
        resolve_resume_checkpoint(configs[2], configs)
