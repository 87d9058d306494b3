"""Shared fixtures: a byte-level BPE tokenizer trained in this session and tiny models saved like real checkpoints.

Everything is written to a temporary folder and loaded back by path, so scripts see the same kind of checkpoint a
user would give them and need no test-only branch.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
# What chatalign caches between runs (prepared rows, reference log-probs) goes to this session's own folder.
os.environ.setdefault("CHATALIGN_CACHE", tempfile.mkdtemp(prefix="chatalign-test-cache-"))

# Special tokens every chat template we ship can be tokenized with as single ids.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<pad>",
    "<s>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<bos>",
    "<eos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
]

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _training_texts(limit: int = 600) -> list[str]:
    rows = json.loads((DATA / "llama_factory_demo" / "alpaca_en_demo.json").read_text())[:limit]
    return [r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in rows]


def build_tiny_tokenizer(out_dir: Path, vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_llama(out_dir: Path, tokenizer, hidden_size: int = 32, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_classifier(out_dir: Path, tokenizer, num_labels: int = 1, seed: int = 0) -> Path:
    """A 2-layer LlamaForSequenceClassification (hidden 32) with the session tokenizer, saved as a checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, num_labels=num_labels)
    LlamaForSequenceClassification(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-layer Llama (hidden 32) with the session tokenizer and a ChatML template, saved as a checkpoint."""
    out = tmp_path_factory.mktemp("tiny_llama")
    return build_tiny_llama(out, tiny_tokenizer)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def load_script(name: str):
    """Import scripts/<name>.py as a module (scripts are not a package), so tests call its main(argv)."""
    import importlib.util

    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"chatalign_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct, prepared from its GGUF file once per session (about 40 s)."""
    out = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"
    load_script("prepare_model").main(["--output_dir", str(out)])
    return out


@pytest.fixture
def tok(tiny_tokenizer):
    """A private copy of the session tokenizer, so tests can change its template and pad token."""
    import copy

    return copy.deepcopy(tiny_tokenizer)


@pytest.fixture
def two_sources(tmp_path):
    """Two sft sources: A, 100 rows as jsonl; B, 40 rows as parquet."""
    from helpers.rows import sft_rows, write_jsonl, write_parquet

    return (
        write_jsonl(tmp_path / "a" / "A.jsonl", sft_rows("A", 100)),
        write_parquet(tmp_path / "b" / "B.parquet", sft_rows("B", 40)),
    )


@pytest.fixture
def prompt_file(tmp_path):
    """A preference file whose prompts the samples of helpers.pair_samples answer."""
    from helpers.pair_samples import SAMPLES, preference_rows, write_jsonl

    return write_jsonl(tmp_path / "prompts.jsonl", preference_rows(SAMPLES))
