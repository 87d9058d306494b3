"""Tokenizers as every script needs them: a chat template installed, the pad, eos and sep tokens prepared (a pad
distinct from eos), template stops, and one fingerprint of what a tokenizer turns text into."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping

from chatalign.configs import ConfigError
from chatalign.data.templates import set_chat_template

logger = logging.getLogger(__name__)

# Tokens that are safe to reuse as padding when a tokenizer has none: they exist in the vocabulary already, so no
# embedding has to be added, and they are never produced as content or as an end of turn.
PAD_CANDIDATES = ("<pad>", "<|pad|>", "<|padding|>", "<|finetune_right_pad_id|>", "<|endoftext|>", "<unk>")
# A recipe's model block names its special tokens as Open-Assistant's SpecialTokens(pad_token, eos_token, sep_token).
SPECIAL_TOKEN_KEYS = ("pad_token", "eos_token", "sep_token")
# A tokenizer without eos reuses the first of these it holds as a special token (Open-Assistant's per-family eos:
# </s> for galactica, llama, bloom; <|endoftext|> for pythia, gpt-neox, codegen, cerebras, falcon), else gets </s>.
EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>")
DEFAULT_EOS = "</s>"
# Embedding rows are grown to a multiple of this when a token is added (tensor-core friendly shapes).
EMBEDDING_MULTIPLE = 64


def load_tokenizer(name_or_path: str, revision: str = "main", trust_remote_code: bool = False,
                   chat_template: str | None = None, padding_side: str | None = None, pad_with_eos: bool = True):
    """A tokenizer with, where asked, a chat template (name, file or jinja string), and a pad token: eos where it has
    none and `pad_with_eos` (enough to batch for generation; training prepares its tokens with
    prepare_special_tokens instead, so passes False)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    if chat_template:
        set_chat_template(tokenizer, chat_template)
    if tokenizer.pad_token is None and pad_with_eos:
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side:
        tokenizer.padding_side = padding_side
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what a text tokenises to and what trainers append to it: the backend's full serialisation
    (vocabulary, merges, normaliser, pre-tokeniser, added tokens) without the truncation and padding state a call
    leaves behind, and the special tokens. The chat template is not in it: callers hash it beside this, so a change
    there is named as a template change."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer: its vocabulary is what it has
        serialised = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    else:
        if backend.truncation is not None or backend.padding is not None:
            # transformers leaves the last call's truncation or padding on the backend; equal tokenizers hash equal
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(backend.to_str())
            backend.no_truncation()
            backend.no_padding()
        serialised = backend.to_str()
    special = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha256(f"{serialised}\x00{special}".encode()).hexdigest()


def ensure_pad_token(tokenizer, model=None, keep_pad_equal_eos: bool = False) -> str:
    """Give `tokenizer` a pad token distinct from eos; resize `model`'s embeddings only if it has fewer rows than the
    tokenizer has tokens (a token was added, here or before).

    Mistral, Llama and OA-style tokenizers ship without a pad token; others (SmolLM2) pad with eos, which makes a
    collator that masks pad labels also mask every eos, so the model never learns to stop. Returns what was done.
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and (tokenizer.pad_token != eos or keep_pad_equal_eos):
        return f"kept pad token {tokenizer.pad_token!r}" + _fit_embeddings(tokenizer, model)
    vocab, special = tokenizer.get_vocab(), _special_tokens(tokenizer)
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and candidate != eos and candidate not in _template_tokens(tokenizer):
            # Only reuse a token the tokenizer treats as special, so text never tokenizes to it.
            if candidate in special or candidate == tokenizer.unk_token:
                tokenizer.pad_token = candidate
                action = f"set pad token to existing {candidate!r}" + _fit_embeddings(tokenizer, model)
                _sync_model_pad(tokenizer, model)
                return action
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    action = "added pad token '<pad>'" + _fit_embeddings(tokenizer, model)
    _sync_model_pad(tokenizer, model)
    return action


def check_special_tokens(requested: Mapping | None, keep_pad_equal_eos: bool = False,
                         source: str | None = None) -> dict[str, str]:
    """The recipe's `special_tokens` mapping, checked before anything loads: only pad_token, eos_token and sep_token,
    each a non-empty string, and a pad distinct from eos unless keep_pad_equal_eos. `source` says where it was set
    (e.g. "block 'pythia-70m' of 'recipes/blocks.yaml'") for the error."""
    if not requested:
        return {}
    where = f" in {source}" if source else ""
    if not isinstance(requested, Mapping):
        raise ConfigError(f"special_tokens{where}: expected a mapping such as {{pad_token: '<pad>', eos_token: "
                          f"'</s>'}}, got {requested!r}")
    for key, token in requested.items():
        if key not in SPECIAL_TOKEN_KEYS:
            raise ConfigError(f"special_tokens{where}: unknown key {key!r}; expected {', '.join(SPECIAL_TOKEN_KEYS)}")
        if not isinstance(token, str) or not token:
            raise ConfigError(f"special_tokens.{key}{where}: expected a token string, got {token!r}")
    pad, eos = requested.get("pad_token"), requested.get("eos_token")
    if pad is not None and pad == eos and not keep_pad_equal_eos:
        raise ConfigError(_pad_is_eos(pad, where, "special_tokens.eos_token"))
    return dict(requested)


def prepare_special_tokens(tokenizer, model=None, requested: Mapping | None = None, keep_pad_equal_eos: bool = False,
                           source: str | None = None) -> list[str]:
    """Give `tokenizer` its eos, pad and sep tokens, in that order (pad must differ from eos); returns what was done.

    A token in `requested` (a recipe's `special_tokens`) is set, added as a special token where the vocabulary lacks
    it. A token not requested is kept where the tokenizer has one, else prepared: eos reuses the first of
    EOS_CANDIDATES the tokenizer holds as a special token, else adds </s>; pad follows ensure_pad_token; sep is eos,
    the rule of most of Open-Assistant's model families. With `model`, its embeddings grow to fit the tokenizer
    (only where a token was added) and its config and generation_config get the pad and eos ids.
    """
    requested = check_special_tokens(requested, keep_pad_equal_eos, source)
    where = f" in {source}" if source else ""
    actions = [_prepare_eos(tokenizer, requested.get("eos_token"))]
    pad = requested.get("pad_token")
    if pad is not None:
        if pad == tokenizer.eos_token and not keep_pad_equal_eos:
            raise ConfigError(_pad_is_eos(pad, where, "the tokenizer's eos token"))
        actions.append(_set_requested(tokenizer, "pad_token", pad))
    elif tokenizer.pad_token is None and keep_pad_equal_eos:
        tokenizer.pad_token = tokenizer.eos_token
        actions.append(f"set pad token to eos {tokenizer.eos_token!r} (keep_pad_equal_eos)")
    else:
        actions.append(ensure_pad_token(tokenizer, keep_pad_equal_eos=keep_pad_equal_eos))
    sep = requested.get("sep_token")
    if sep is not None:
        actions.append(_set_requested(tokenizer, "sep_token", sep))
    elif tokenizer.sep_token is None:
        tokenizer.sep_token = tokenizer.eos_token
        actions.append(f"set sep token to eos {tokenizer.eos_token!r}")
    else:
        actions.append(f"kept sep token {tokenizer.sep_token!r}")
    if model is not None:
        resized = _fit_embeddings(tokenizer, model).removeprefix(" and ")
        actions.extend([resized] if resized else [])
        _sync_model_pad(tokenizer, model)
        _sync_model_eos(tokenizer, model)
    return actions


def _pad_is_eos(pad: str, where: str, eos_from: str) -> str:
    return (f"special_tokens.pad_token {pad!r}{where} is also {eos_from}: a collator that masks padding would mask "
            "every eos, so the model would never learn to stop; name another pad_token, or set keep_pad_equal_eos")


def _prepare_eos(tokenizer, requested: str | None) -> str:
    if requested is not None:
        return _set_requested(tokenizer, "eos_token", requested)
    if tokenizer.eos_token is not None:
        return f"kept eos token {tokenizer.eos_token!r}"
    vocab, special = tokenizer.get_vocab(), _special_tokens(tokenizer)
    for candidate in EOS_CANDIDATES:
        if candidate in vocab and candidate in special:
            tokenizer.eos_token = candidate
            return f"set eos token to existing {candidate!r}"
    tokenizer.add_special_tokens({"eos_token": DEFAULT_EOS})
    return f"added eos token {DEFAULT_EOS!r}"


def _set_requested(tokenizer, attr: str, token: str) -> str:
    name = attr.removesuffix("_token")
    if getattr(tokenizer, attr) == token:
        return f"kept {name} token {token!r}"
    existed = token in tokenizer.get_vocab()
    tokenizer.add_special_tokens({attr: token})
    return f"set {name} token to existing {token!r}" if existed else f"added {name} token {token!r}"


def _special_tokens(tokenizer) -> set[str]:
    # Added tokens flagged special stay special even after they stop being the pad/unk token.
    return set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}


def _fit_embeddings(tokenizer, model) -> str:
    """Grow `model`'s embeddings where the tokenizer outgrew them; ' and resized embeddings a -> b' if it did."""
    if model is None:
        return ""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= rows:
        return ""
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=EMBEDDING_MULTIPLE)
    return f" and resized embeddings {rows} -> {model.get_input_embeddings().weight.shape[0]}"


def _template_tokens(tokenizer) -> set[str]:
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return {tok for tok in PAD_CANDIDATES if tok in template}


def _sync_model_pad(tokenizer, model) -> None:
    if model is None:
        return
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _sync_model_eos(tokenizer, model) -> None:
    """The model's config names the tokenizer's eos; its generation_config also stops there (other stops kept)."""
    eos_id = tokenizer.eos_token_id
    configured = model.config.eos_token_id
    if eos_id not in (configured if isinstance(configured, list) else [configured]):
        model.config.eos_token_id = eos_id
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        ids = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [
            i for i in [generation.eos_token_id] if i is not None]
        if eos_id not in ids:
            ids = [eos_id, *ids]
            generation.eos_token_id = ids if len(ids) > 1 else ids[0]


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
