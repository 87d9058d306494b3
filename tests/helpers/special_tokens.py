"""A tiny checkpoint whose tokenizer names no pad, eos or sep token, and model blocks that load it.

The session tokenizer (tests/conftest.py) is saved again with pad_token and eos_token dropped from its config (it
has no sep), so it looks like the Open-Assistant model families that needed `get_tokenizer` edited: its vocabulary
still holds </s> and <pad> as special tokens, and the rules reuse them.
"""

import json
import shutil
from pathlib import Path

import yaml
from conftest import build_tiny_llama

DROPPED = ("pad_token", "eos_token", "sep_token")
# Ids of the session tokenizer's special tokens (conftest.SPECIAL_TOKENS order) and its size.
PAD_ID, EOS_ID, IM_END_ID, VOCAB = 1, 3, 5, 1024


def save_without_special_tokens(tokenizer_dir: Path, out_dir: Path) -> Path:
    """A copy of a saved tokenizer with pad_token, eos_token and sep_token removed from its config."""
    shutil.copytree(tokenizer_dir, out_dir)
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for key in DROPPED:
        config.pop(key, None)
    config_path.write_text(json.dumps(config))
    return out_dir


def tiny_checkpoint_without_special_tokens(tokenizer_dir: Path, out_dir: Path) -> Path:
    """A 2-layer Llama with exactly as many embedding rows as the tokenizer has tokens, and that tokenizer."""
    from transformers import AutoTokenizer

    tokens_dir = save_without_special_tokens(tokenizer_dir, out_dir.parent / f"{out_dir.name}-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokens_dir)
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.sep_token) == (None, None, None)
    build_tiny_llama(out_dir, tokenizer)
    return out_dir


def write_tiny_blocks(path: Path, model_dir: Path) -> Path:
    """Model blocks for the tiny checkpoint: one with no special tokens named, one naming its own, one conflicting."""
    model = {"model_name_or_path": str(model_dir), "output_dir": str(path.parent / "out")}
    blocks = {
        "tiny-no-specials": model,
        "tiny-explicit": {**model, "special_tokens": {"eos_token": "<|im_end|>", "pad_token": "<|pad|>",
                                                      "sep_token": "<|sep|>"}},
        "tiny-pad-is-eos": {**model, "special_tokens": {"pad_token": "</s>"}},  # the rules make </s> the eos
    }
    path.write_text(yaml.safe_dump(blocks))
    return path
