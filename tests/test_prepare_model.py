"""scripts/prepare_model.py: a local checkpoint prepared for chatalign, and the real SmolLM2."""

import json

from conftest import load_script
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
