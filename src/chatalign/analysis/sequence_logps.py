"""Summed response log-probs of preference pairs under any causal LM, cached and resumable.

The numbers are TRL's: the same pass that computes DPO's reference log-probs (chatalign.train.dpo.reference), run with
the model in question, so an analysis and a DPO run agree on what log pi(y|x) is (template, truncation, max_length).
Each model's log-probs go to a parquet file in the precomputed-reference format, with its dependencies (model,
weights, tokenizer, template, max_length ...) in the metadata: a rerun computes only the pairs it lacks, a file
made with other dependencies is an error naming the first difference, and run_dpo's own precompute file is read
as is for its reference model.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from chatalign.train.dpo.reference import (
    RefLogps,
    compute_ref_logps,
    open_ref_logps_file,
    pair_keys,
    reference_dependencies,
)
from chatalign.train.models import check_quantization_request, load_model

logger = logging.getLogger(__name__)


@dataclass
class LogpsModel:
    """A model whose log-probs are wanted: checkpoint, revision, and the tokenizer (its chat template) to render with."""

    label: str
    name_or_path: str
    revision: str | None
    tokenizer: Any


def dependencies_of(spec: LogpsModel, model_args, training_args) -> dict[str, Any]:
    """What the log-probs of `spec` depend on, in the precomputed-reference format."""
    as_reference = SimpleNamespace(ref_model_name_or_path=spec.name_or_path, ref_model_revision=spec.revision)
    return reference_dependencies(model_args, training_args, as_reference, spec.tokenizer)


@contextlib.contextmanager
def inference_only_quantized():
    """transformers' Trainer refuses a quantized model without trainable adapters (it assumes training); TRL's
    log-prob pass only runs the model without gradients, so the check is lifted while that trainer is built."""
    import transformers.trainer as hf_trainer

    original = hf_trainer.validate_quantization_for_training
    hf_trainer.validate_quantization_for_training = lambda model: None
    try:
        yield
    finally:
        hf_trainer.validate_quantization_for_training = original


def load_scoring_model(spec: LogpsModel, model_args, training_args, cpu_offload: bool = False):
    """The model in the recipe's dtype; 8/4-bit (GPU only) with fp32 CPU offload of what does not fit when asked."""
    check_quantization_request(model_args.load_in_4bit, model_args.load_in_8bit)
    if cpu_offload and not model_args.load_in_8bit:
        raise ValueError("llm_int8_enable_fp32_cpu_offload works with load_in_8bit (bitsandbytes' int8 offload)")
    if not cpu_offload:
        return load_model(model_args, training_args, spec.tokenizer, spec.name_or_path, spec.revision)
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from chatalign.data.tokenizers import ensure_pad_token

    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        spec.name_or_path, revision=spec.revision, dtype=dtype, device_map="auto",
        quantization_config=BitsAndBytesConfig(load_in_8bit=True, llm_int8_enable_fp32_cpu_offload=True),
        trust_remote_code=getattr(training_args, "trust_remote_code", False))  # fmt: skip
    ensure_pad_token(spec.tokenizer, model, keep_pad_equal_eos=model_args.keep_pad_equal_eos)
    return model


def pair_logps(spec: LogpsModel, splits: list, cache_path: str | Path, model_args, training_args,
               dependencies: dict[str, Any], cpu_offload: bool = False) -> RefLogps:
    """Log-probs of every pair of `splits` under `spec`: read from `cache_path` where present, the missing ones
    computed (the model is loaded only then) and saved chunk by chunk.

    `dependencies` (dependencies_of) are taken before any model is loaded, as run_dpo takes them: loading may give
    the tokenizer a pad token, which changes its fingerprint."""
    path = Path(cache_path)
    data = open_ref_logps_file(path, dependencies) if path.exists() else RefLogps({}, set(), {})
    missing = sum(key not in data for split in splits for key in pair_keys(split))
    if missing == 0 and path.exists():
        logger.info("%s: all %d pairs' log-probs already in %s", spec.label, len(data), path)
        return data
    logger.info("%s: computing log-probs of %d pairs with %s", spec.label, missing, spec.name_or_path)
    model = load_scoring_model(spec, model_args, training_args, cpu_offload)
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    quantized = model_args.load_in_4bit or model_args.load_in_8bit
    with inference_only_quantized() if quantized else contextlib.nullcontext():
        data = compute_ref_logps(model, spec.tokenizer, training_args, splits, path, data, dependencies)
    del model
    return data


def logps_of_rows(data: RefLogps, keys: list[str]) -> list[tuple[float, float] | None]:
    """(chosen, rejected) per row key; None where TRL drops the pair (its prompt alone fills max_length)."""
    return [data.logps.get(key) for key in keys]
