"""Model loading for training: the recipe's model keys, the tokenizer, policy and reference models, PEFT."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from trl import ModelConfig

from chatalign.data.tokenizers import check_special_tokens, load_tokenizer, prepare_special_tokens
from chatalign.train.chunked_logps import fit_fused_head_tiles

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments(ModelConfig):
    """TRL's ModelConfig plus what chatalign's loading needs."""

    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Default: model_name_or_path."})
    keep_pad_equal_eos: bool = field(
        default=False, metadata={"help": "Keep a pad token equal to eos (default: use a distinct pad token)."}
    )
    special_tokens: dict[str, str] | None = field(
        default=None,
        metadata={"help": "The model's pad, eos and sep tokens, as in a model block: {pad_token: '<|padding|>', "
                          "eos_token: '<|endoftext|>', sep_token: '<|endoftext|>'}. Each is optional: a given token "
                          "is set (added, and the embeddings resized, where the vocabulary lacks it); one not given is "
                          "kept, or prepared as prepare_model does where the tokenizer has none."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.special_tokens = check_special_tokens(self.special_tokens, self.keep_pad_equal_eos) or None


def load_training_tokenizer(model_args: ModelArguments, chat_template: str | None, trust_remote_code: bool = False,
                            sources: Mapping[str, str] | None = None):
    """The tokenizer with the recipe's chat template, or the checkpoint's own (a template is required), and its pad,
    eos and sep tokens prepared (prepare_special_tokens; load_model grows the embeddings for any token added).
    `sources` (ChatalignParser.sources) says where special_tokens was set, e.g. a model block, for its errors."""
    source = (sources or {}).get("special_tokens")
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    tokenizer = load_tokenizer(name, revision=model_args.model_revision, trust_remote_code=trust_remote_code,
                               chat_template=chat_template, pad_with_eos=False)
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer of '{name}' has no chat template: set chat_template in the recipe "
                         "(a shipped name such as chatml or zephyr, a .jinja file or a jinja string)")
    actions = prepare_special_tokens(tokenizer, None, model_args.special_tokens, model_args.keep_pad_equal_eos,
                                     source or f"the model arguments of '{name}'")
    logger.info("special tokens of %s: %s", name, "; ".join(actions))
    return tokenizer


def flash_attention_2_available() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def trains_padding_free(training_args) -> bool:
    """Whether the trainer flattens its batches into one row with restarting position_ids: TRL's padding_free, or
    SFT packing with a best-fit strategy (which TRL trains padding-free)."""
    if getattr(training_args, "padding_free", False):
        return True
    return bool(getattr(training_args, "packing", False)) and getattr(
        training_args, "packing_strategy", None) in ("bfd", "bfd_split")


def select_attn_implementation(requested: str | None, padding_free: bool) -> tuple[str | None, str]:
    """The attention to load and why. Padding-free training with sdpa (or nothing asked) gets flash_attention_2 where
    flash-attn is installed (varlen itself, from position_ids), else chatalign_varlen (per-sequence sdpa, no dense
    T x T mask); any other explicit choice is kept."""
    if not padding_free:
        return requested, "as the recipe asks" if requested else "not set"
    if requested not in (None, "sdpa"):
        return requested, "as the recipe asks, kept for padding-free training"
    if flash_attention_2_available():
        return "flash_attention_2", "padding-free training, flash-attn installed"
    from chatalign.train.varlen import VARLEN_ATTENTION  # registers it with transformers

    return VARLEN_ATTENTION, "padding-free training without flash-attn: per-sequence sdpa"


def load_model(model_args: ModelArguments, training_args, tokenizer, model_name_or_path: str | None = None,
               revision: str | None = None, padding_free: bool | None = None):
    """A causal LM in the recipe's dtype and attention, quantized where asked, with the tokenizer's special tokens
    (prepare_special_tokens: a pad distinct from eos, embeddings grown for any token added);
    `model_name_or_path` and `revision` default to the policy's. `padding_free` (default: what training_args say,
    trains_padding_free) picks a varlen attention for flattened batches (select_attn_implementation)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    check_quantization_request(model_args.load_in_4bit, model_args.load_in_8bit)
    quantization_config = get_quantization_config(model_args)
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    kwargs = dict(revision=revision or model_args.model_revision, dtype=dtype,
                  trust_remote_code=getattr(training_args, "trust_remote_code", False))
    if padding_free is None:
        padding_free = trains_padding_free(training_args)
    attn_implementation, why = select_attn_implementation(model_args.attn_implementation, padding_free)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    logger.info("attention: %s (%s)", attn_implementation or "transformers' default", why)
    if quantization_config is not None:
        from accelerate import PartialState

        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = {"": PartialState().local_process_index}
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path or model_args.model_name_or_path, **kwargs)
    actions = prepare_special_tokens(tokenizer, model, model_args.special_tokens, model_args.keep_pad_equal_eos)
    logger.info("special tokens: %s", "; ".join(actions))
    if getattr(training_args, "gradient_checkpointing", False):
        model.config.use_cache = False
    # TRL's fused LM head scores every trainer's labels; off Triton its GPU-sized tiles would outgrow full logits.
    fit_fused_head_tiles(getattr(training_args, "device", "cpu"))
    return model


def check_quantization_request(load_in_4bit: bool, load_in_8bit: bool) -> None:
    """bitsandbytes quantization needs a CUDA GPU: say so before any weights are read."""
    if not (load_in_4bit or load_in_8bit):
        return
    import torch

    flag = "--load_in_4bit" if load_in_4bit else "--load_in_8bit"
    if not torch.cuda.is_available():
        raise ValueError(f"{flag} needs a CUDA GPU (bitsandbytes); this machine has none. Use full or LoRA training.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError(f"{flag} needs bitsandbytes: pip install bitsandbytes") from None


def reference_model_path(model_args: ModelArguments, training_args, ref_model_name_or_path: str | None = None,
                         precomputed_file: bool = False) -> str | None:
    """The reference model a preference run must load, or None where it needs none in memory."""
    if precomputed_file:
        return None  # the log-probs come with the data
    if ref_model_name_or_path:
        return ref_model_name_or_path
    if model_args.use_peft or training_args.precompute_ref_log_probs:
        return None  # the policy with its adapter disabled / TRL's own pass with the policy before training
    # TRL would reload the policy's path itself, but without our dtype, attention and pad-token handling.
    return model_args.model_name_or_path


def reference_revision(model_args: ModelArguments, ref_model_name_or_path: str | None,
                       ref_model_revision: str | None) -> str:
    """The revision of the reference: ref_model_revision; else the policy's own when the reference is the policy's
    checkpoint; else main (another checkpoint's default, not the policy's revision)."""
    if ref_model_revision:
        return ref_model_revision
    if not ref_model_name_or_path or ref_model_name_or_path == model_args.model_name_or_path:
        return model_args.model_revision
    return "main"


def load_reference_model(model_args: ModelArguments, training_args, tokenizer, policy, path: str | None,
                         revision: str | None = None, padding_free: bool | None = None):
    """The frozen reference from `path` at `revision` (None: no reference model), with as many embedding rows as
    the policy, and the policy's attention rule (`padding_free` as in load_model).

    load_model may have grown the policy's embeddings for a new pad token; loading the reference afterwards finds the
    pad token already there and would not resize, yet it sees the same padded batches.
    """
    if path is None:
        return None
    ref = load_model(model_args, training_args, tokenizer, path, revision, padding_free=padding_free)
    rows = policy.get_input_embeddings().weight.shape[0]
    if ref.get_input_embeddings().weight.shape[0] != rows:
        ref.resize_token_embeddings(rows)
    return ref


def peft_config(model_args: ModelArguments):
    from trl import get_peft_config

    return get_peft_config(model_args)


def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)
