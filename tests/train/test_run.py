"""chatalign.train.run: what every training run shares (the recipe's data mixture and its empty system messages)."""

import json

import pytest

from chatalign.data.arguments import DataArguments
from chatalign.data.templates import resolve_chat_template
from chatalign.train.run import load_mixture

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
