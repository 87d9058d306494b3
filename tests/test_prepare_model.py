"""scripts/prepare_model.py: a local checkpoint prepared for chatalign, its special tokens as a training load gives
them, and the real SmolLM2."""

import json

import pytest
from conftest import REPO, load_script
from helpers.special_tokens import EOS_ID, PAD_ID, VOCAB, tiny_checkpoint_without_special_tokens, write_tiny_blocks
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_prepare_model_from_a_local_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "prepared"
    load_script("prepare_model").main(["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out),
                                      "--chat_template", "zephyr"])
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (out / "model.safetensors").is_file()
    assert "<|assistant|>" in tok.chat_template
    info = json.loads((out / "prepare_info.json").read_text())
    assert info["chat_template"] == "zephyr" and info["source"] == str(tiny_model_dir)
    assert tok.convert_tokens_to_ids("</s>") in info["stop_token_ids"]
    assert model.generation_config.eos_token_id == info["stop_token_ids"]
    # A second run leaves an existing checkpoint alone.
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    load_script("prepare_model").main(["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out)])
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def _tokens_of(tokenizer, model):
    return ((tokenizer.eos_token, tokenizer.pad_token, tokenizer.sep_token),
            (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id, len(tokenizer)),
            model.get_input_embeddings().weight.shape[0], (model.config.eos_token_id, model.config.pad_token_id))


@pytest.mark.parametrize("block, flags", [
    ("tiny-no-specials", []),
    ("tiny-explicit", ["--eos_token", "<|im_end|>", "--pad_token", "<|pad|>", "--sep_token", "<|sep|>"]),
])
def test_prepare_model_and_a_composed_config_load_agree(tmp_path, tiny_tokenizer_dir, block, flags):
    from chatalign.train.models import load_model, load_training_tokenizer

    source = tiny_checkpoint_without_special_tokens(tiny_tokenizer_dir, tmp_path / "tiny-no-specials")
    parser = load_script("run_sft").make_parser()
    model_args, data_args, training_args, _ = parser.parse(
        [str(REPO / "recipes" / "blocks.yaml"), str(write_tiny_blocks(tmp_path / "blocks.yaml", source)),
         "--configs", "defaults", block])
    tokenizer = load_training_tokenizer(model_args, data_args.chat_template)
    loaded = _tokens_of(tokenizer, load_model(model_args, training_args, tokenizer))

    out = tmp_path / "prepared"
    load_script("prepare_model").main(["--model_name_or_path", str(source), "--output_dir", str(out), *flags])
    prepared = _tokens_of(AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out))
    assert prepared == loaded
    info = json.loads((out / "prepare_info.json").read_text())
    if not flags:
        assert prepared == (("</s>", "<pad>", "</s>"), (EOS_ID, PAD_ID, EOS_ID, VOCAB), VOCAB, (EOS_ID, PAD_ID))
        assert info["special_tokens"] == ["set eos token to existing '</s>'", "set pad token to existing '<pad>'",
                                          "set sep token to eos '</s>'"]
    else:
        assert prepared[2] == 1088 and info["special_tokens"][-1] == "resized embeddings 1024 -> 1088"
    # The prepared checkpoint loaded by the same block needs nothing more.
    model_args.model_name_or_path = str(out)
    again = load_training_tokenizer(model_args, data_args.chat_template)
    assert _tokens_of(again, load_model(model_args, training_args, again)) == prepared


def test_prepare_model_refuses_a_pad_equal_to_eos_before_loading(tmp_path):
    with pytest.raises(SystemExit, match=r"^prepare_model: special_tokens\.pad_token '</s>' in the command line is "
                                         r"also special_tokens\.eos_token"):
        load_script("prepare_model").main(["--model_name_or_path", str(tmp_path / "never-read"), "--output_dir",
                                           str(tmp_path / "out"), "--pad_token", "</s>", "--eos_token", "</s>"])
    assert not (tmp_path / "out").exists()


def test_prepared_smollm2_generates(smollm2_dir):
    from chatalign.generation.local import generate_local
    from chatalign.generation.params import SamplingParams

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert not hasattr(model.config, "quantization_config")
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token != tok.eos_token
    assert model.num_parameters() == 134_515_008
    answers = generate_local(model, tok, [[{"role": "user", "content": "What is the capital of France?"}]],
                             SamplingParams(max_tokens=12), progress=False)
    assert "Paris" in answers[0][0]
