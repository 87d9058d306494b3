"""Pad tokens, stop tokens, quantization checks, and prepare_model on a tiny checkpoint and on the real SmolLM2."""

import json

import pytest
import torch
from conftest import load_script
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatalign.model_utils import check_quantization_request, ensure_pad_token, set_stop_tokens


def test_pad_reuses_an_existing_special_token(tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.pad_token = tok.eos_token  # the SmolLM2 situation: pad == eos
    before = len(tok)
    assert ensure_pad_token(tok) == "set pad token to existing '<pad>'"
    assert tok.pad_token == "<pad>" and tok.pad_token != tok.eos_token and len(tok) == before


def test_pad_kept_when_distinct_or_asked(tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert ensure_pad_token(tok) == "kept pad token '<pad>'"
    tok.pad_token = tok.eos_token
    assert ensure_pad_token(tok, keep_pad_equal_eos=True) == "kept pad token '<|im_end|>'"


def test_pad_added_and_embeddings_resized_only_when_needed(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {chr(c): i for i, c in enumerate(range(97, 123))}
    vocab["</s>"] = len(vocab)
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="</s>"))
    raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")  # Llama/Mistral style: no pad, no unk
    tok.unk_token = None
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    rows = model.get_input_embeddings().weight.shape[0]
    action = ensure_pad_token(tok, model)
    assert tok.pad_token == "<pad>" and tok.pad_token_id == rows
    assert action == f"added pad token '<pad>' and resized embeddings {rows} -> 64"
    assert model.config.pad_token_id == tok.pad_token_id
    # Embeddings with spare rows (vocab padded to a multiple of 64 upstream): adding a token needs no resize.
    spare = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    fresh = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")
    fresh.unk_token = None
    assert ensure_pad_token(fresh, spare) == "added pad token '<pad>'"
    assert spare.get_input_embeddings().weight.shape[0] == 64


def test_stop_tokens_join_eos(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = set_stop_tokens(tok, model, ["<|im_end|>", "<|eot_id|>", "not a token"])
    assert ids == [tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")]
    assert model.generation_config.eos_token_id == ids


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
@pytest.mark.parametrize("flags, name", [((True, False), "--load_in_4bit"), ((False, True), "--load_in_8bit")])
def test_quantization_on_cpu_is_a_clear_error(flags, name):
    with pytest.raises(ValueError, match=f"^{name} needs a CUDA GPU"):
        check_quantization_request(*flags)
    check_quantization_request(False, False)


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


def test_prepared_smollm2_generates(smollm2_dir):
    from chatalign.generation import SamplingParams, generate_local

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert not hasattr(model.config, "quantization_config")
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token != tok.eos_token
    assert model.num_parameters() == 134_515_008
    answers = generate_local(model, tok, [[{"role": "user", "content": "What is the capital of France?"}]],
                             SamplingParams(max_tokens=12), progress=False)
    assert "Paris" in answers[0][0]
