"""Tokenizers as every script needs them: a chat template installed, a pad token distinct from eos, template stops."""

from __future__ import annotations

import logging

from chatalign.data.templates import set_chat_template

logger = logging.getLogger(__name__)

# Tokens that are safe to reuse as padding when a tokenizer has none: they exist in the vocabulary already, so no
# embedding has to be added, and they are never produced as content or as an end of turn.
PAD_CANDIDATES = ("<pad>", "<|pad|>", "<|finetune_right_pad_id|>", "<|endoftext|>", "<unk>")


def load_tokenizer(name_or_path: str, revision: str = "main", trust_remote_code: bool = False,
                   chat_template: str | None = None, padding_side: str | None = None):
    """A tokenizer with a pad token and, where asked, a chat template (name, file or jinja string)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    if chat_template:
        set_chat_template(tokenizer, chat_template)
    if tokenizer.pad_token is None:
        # Enough to batch for generation; training calls ensure_pad_token(tokenizer, model), which can resize.
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side:
        tokenizer.padding_side = padding_side
    return tokenizer


def ensure_pad_token(tokenizer, model=None, keep_pad_equal_eos: bool = False) -> str:
    """Give `tokenizer` a pad token distinct from eos; resize `model`'s embeddings only if a token had to be added.

    Mistral, Llama and OA-style tokenizers ship without a pad token; others (SmolLM2) pad with eos, which makes a
    collator that masks pad labels also mask every eos, so the model never learns to stop. Returns what was done.
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and (tokenizer.pad_token != eos or keep_pad_equal_eos):
        return f"kept pad token {tokenizer.pad_token!r}"
    vocab = tokenizer.get_vocab()
    # Added tokens flagged special stay special even after they stop being the pad/unk token.
    special = set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and candidate != eos and candidate not in _template_tokens(tokenizer):
            # Only reuse a token the tokenizer treats as special, so text never tokenizes to it.
            if candidate in special or candidate == tokenizer.unk_token:
                tokenizer.pad_token = candidate
                _sync_model_pad(tokenizer, model)
                return f"set pad token to existing {candidate!r}"
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    action = "added pad token '<pad>'"
    if model is not None:
        rows = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
            action += f" and resized embeddings {rows} -> {model.get_input_embeddings().weight.shape[0]}"
    _sync_model_pad(tokenizer, model)
    return action


def _template_tokens(tokenizer) -> set[str]:
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return {tok for tok in PAD_CANDIDATES if tok in template}


def _sync_model_pad(tokenizer, model) -> None:
    if model is None:
        return
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def set_stop_tokens(tokenizer, model, stop_strings: list[str]) -> list[int]:
    """Make `generate` stop at the template's end-of-turn tokens too (e.g. <|im_end|>, <|eot_id|>).

    The ids go into the checkpoint's generation_config, so every later generation from it stops where the template
    the model was trained with ends a turn: training, generation and evaluation cannot drift apart.
    """
    ids = []
    eos = model.generation_config.eos_token_id
    ids.extend(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    for text in stop_strings:
        token_ids = tokenizer.convert_tokens_to_ids([text])
        if token_ids and token_ids[0] is not None and token_ids[0] != tokenizer.unk_token_id:
            ids.append(token_ids[0])
    ids = list(dict.fromkeys(i for i in ids if i is not None))
    model.generation_config.eos_token_id = ids if len(ids) > 1 else ids[0]
    return ids
