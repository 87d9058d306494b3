"""KTO and nnPU-KTO: recipe keys, data ordering, prompt truncation and the loss, around TRL's KTOTrainer.

Standard KTO is TRL's loss unchanged. nnPU-KTO is for self-play data (SPIN-style iterations): the real (ground-truth)
response of a prompt is a labelled *positive* (label True) and the model's own generation is *unlabelled* (label False),
since some generations are as good as the real answer. The KTO value function is the per-example loss and the
non-negative PU risk of Kiryo et al. (2017, "Positive-Unlabeled Learning with Non-Negative Risk Estimator") combines
the two groups, with `prior` the share of positives among the unlabelled rows.

Batch composition (nnPU): every batch must hold real and generated rows, because the risk needs the mean over each
group. `pair_real_generated` orders the data as seeded-shuffled (real, generated) pairs of the same prompt, the batch
size must be even, and rows are only ever dropped pairwise, so with TRL's sequential sampling each batch is whole pairs.
A batch that still lacks a group is an error, not a silently skipped step.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import torch
from trl import KTOTrainer

from chatalign.store import prompt_id, seeded_rng
from chatalign.train.chunked_logps import fit_fused_head_tiles
from chatalign.train.padding_free import (
    FlatForward,
    PaddingFreeUnpairedCollator,
    flat_forward,
    is_flat,
    padded_layout,
    reference_forward,
    reference_in_batch,
)
from chatalign.train.prepared_data import cached_trainer_dataset
from chatalign.train.run import PreparedDataArguments

logger = logging.getLogger(__name__)

REAL, GENERATED = True, False  # unpaired `label` of the real response and of the model's own generation


@dataclass
class KTOScriptArguments(PreparedDataArguments):
    """Recipe keys of run_kto beyond KTOConfig (names chosen not to clash with KTOConfig, ModelConfig or DataArguments)."""

    kto_variant: Literal["standard", "nnpu"] = field(
        default="standard",
        metadata={"help": "'standard': TRL's KTO loss. 'nnpu': non-negative PU risk for self-play data (label True = "
                          "real response, positive; label False = own generation, unlabelled)."},
    )
    prior: float = field(
        default=0.1, metadata={"help": "nnPU class prior pi in (0, 1): share of positives among the generations."}
    )
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Reference model; default: model_name_or_path (with PEFT: adapters disabled)."}
    )
    ref_model_revision: str | None = field(
        default=None,
        metadata={"help": "Revision of ref_model_name_or_path (default: main; the policy's model_revision when the "
                          "reference is the policy itself)."},
    )
    nnpu_detach_kl: bool = field(
        default=False,
        metadata={"help": "nnPU: false (the seed's code) lets gradients flow through the KL baselines KL_real and "
                          "KL_gen; true treats them as constants, as the KTO paper's reference point."},
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "When prompt + completion exceed max_length, keep only the last max_prompt_length prompt "
                          "tokens (TRL < 1.0 behaviour; TRL 1.16 removed the key). None: prompts are never cut."},
    )
    padding_free: bool = field(
        default=False,
        metadata={"help": "Flatten each batch into one row with per-sequence position_ids (no padding), for the "
                          "completions and the KL completions; same loss as padded batches (KTOConfig has no such "
                          "key, unlike DPOConfig)."},
    )

    def __post_init__(self):
        if not 0.0 < self.prior < 1.0:
            raise ValueError(f"prior must lie strictly between 0 and 1, got {self.prior}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be a positive token count, got {self.max_prompt_length}")


def check_kto_arguments(script_args: KTOScriptArguments, training_args, data_args) -> None:
    """Recipe combinations that cannot work, reported before any model or data is loaded."""
    if data_args.resample_each_epoch:
        # TRL builds the KL completions (and we build nnPU pairs) once, on a fixed row order: a redraw would break both.
        raise ValueError("resample_each_epoch is not supported by run_kto: KTO trains on one fixed, pre-shuffled order")
    max_length, max_prompt = training_args.max_length, script_args.max_prompt_length
    if max_prompt is not None and (max_length is None or max_prompt >= max_length):
        raise ValueError(f"max_prompt_length ({max_prompt}) must be smaller than max_length ({max_length})")
    if script_args.kto_variant != "nnpu":
        return
    if training_args.loss_type != "kto":
        raise ValueError(f"kto_variant 'nnpu' replaces the KTO loss; loss_type must stay 'kto', got "
                         f"'{training_args.loss_type}'")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        size = getattr(training_args, name)
        if size < 2 or size % 2:
            raise ValueError(f"kto_variant 'nnpu' needs an even {name} >= 2 (batches are (real, generated) pairs), "
                             f"got {size}")
    if training_args.desirable_weight != 1.0 or training_args.undesirable_weight != 1.0:
        logger.warning("kto_variant 'nnpu' ignores desirable_weight/undesirable_weight: prior weighs the groups")


# --------------------------------------------------------------------------------------------------------------------
# The nnPU-KTO loss


def nnpu_kto_loss(r_real: torch.Tensor, r_gen: torch.Tensor, beta: float, prior: float, detach_kl: bool = False):
    """Non-negative PU risk on the KTO value function. Returns (loss, metrics), metrics detached.

    r_real, r_gen: summed log-ratios log pi(y|x) - log pi_ref(y|x) of the real (positive) and generated (unlabelled)
    responses. The KL baselines are their batch means clamped at 0. As in the seed's code, gradients flow through
    them (where the mean is above 0); ``detach_kl`` makes them constants instead, the reference point of the KTO
    paper, whose own KL estimate is never optimised.

        P+ = prior * mean(1 - sigmoid(beta * (r_real - KL_gen)))     real treated as desirable
        P- = prior * mean(1 - sigmoid(beta * (KL_gen - r_real)))     real treated as undesirable
        U- =         mean(1 - sigmoid(beta * (KL_real - r_gen)))     generated treated as undesirable
        loss = P+ + (U- - P-)   if U- - P- >= 0
               P- - U-          otherwise: the negative-class risk estimate went below zero (overfitting); step
                                against it instead ("defitting", Kiryo et al. 2017)
    """
    if r_real.numel() == 0 or r_gen.numel() == 0:
        raise ValueError(f"nnpu_kto_loss needs real and generated rows, got {r_real.numel()} real and "
                         f"{r_gen.numel()} generated")
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must lie strictly between 0 and 1, got {prior}")
    kl_real = r_real.mean().clamp(min=0)
    kl_gen = r_gen.mean().clamp(min=0)
    if detach_kl:
        kl_real, kl_gen = kl_real.detach(), kl_gen.detach()
    positive_risk = prior * (1 - torch.sigmoid(beta * (r_real - kl_gen))).mean()
    positive_as_negative = prior * (1 - torch.sigmoid(beta * (kl_gen - r_real))).mean()
    unlabelled_as_negative = (1 - torch.sigmoid(beta * (kl_real - r_gen))).mean()
    negative_risk = unlabelled_as_negative - positive_as_negative
    defit = negative_risk < 0
    # torch.where, not `if`: no host sync, and only the taken branch receives gradient.
    loss = torch.where(defit, -negative_risk, positive_risk + negative_risk)
    metrics = {
        "kl_real": kl_real.detach(), "kl_gen": kl_gen.detach(), "defit": defit.float(),
        "positive_risk": positive_risk.detach(), "positive_as_negative_risk": positive_as_negative.detach(),
        "unlabelled_as_negative_risk": unlabelled_as_negative.detach(), "negative_risk": negative_risk.detach(),
    }
    return loss, metrics


# --------------------------------------------------------------------------------------------------------------------
# Row order: TRL's KTO samples sequentially (its KL completions are built per batch-sized block), so the order the
# rows are in is the order they are trained in.


def shuffle_rows(dataset, seed: int):
    """Seeded shuffle for standard KTO. mix_datasets already permutes its output, but run_kto must not depend on that
    default: with sequential sampling an unshuffled file would be trained in file order."""
    return dataset.shuffle(seed=seed)


def pair_real_generated(dataset, seed: int, split: str = "train"):
    """Order unpaired self-play rows as (real, generated) pairs of the same prompt, pairs in seeded random order.

    Within a prompt the k-th real row is paired with the k-th generated row (mixture order); rows left without a
    partner are dropped and counted. Returns (dataset, counts).
    """
    prompt_ids = dataset["prompt_id"] if "prompt_id" in dataset.column_names else [None] * len(dataset)
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for index, (prompt, pid, label) in enumerate(zip(dataset["prompt"], prompt_ids, dataset["label"], strict=True)):
        # The prompt_id the pipeline wrote names the prompt; a row without one is grouped by its prompt's id.
        real, generated = groups.setdefault(pid or prompt_id(prompt), ([], []))
        (real if bool(label) is REAL else generated).append(index)
    pairs = [pair for real, generated in groups.values() for pair in zip(real, generated, strict=False)]
    counts = Counter({"pairs": len(pairs)})
    for real, generated in groups.values():
        counts["dropped: real without a generated partner"] += max(len(real) - len(generated), 0)
        counts["dropped: generated without a real partner"] += max(len(generated) - len(real), 0)
    counts = {k: v for k, v in counts.items() if v}
    if not pairs:
        raise ValueError(f"nnPU-KTO {split} data: no prompt has both a real (label True) and a generated (label False) "
                         f"response ({len(dataset)} rows)")
    dropped = len(dataset) - 2 * len(pairs)
    if dropped:
        logger.warning("nnPU-KTO %s data: %d of %d rows have no partner and are dropped: %s", split, dropped,
                       len(dataset), counts)
    order = seeded_rng(seed, "nnpu_pairs", split).permutation(len(pairs))
    return dataset.select([index for p in order for index in pairs[p]]), counts


# --------------------------------------------------------------------------------------------------------------------
# Prompt truncation (max_prompt_length)


def truncate_prompt_ids(prompt_ids: list[int], completion_length: int, max_length: int | None,
                        max_prompt_length: int | None, bos_token_id: int | None = None) -> list[int]:
    """TRL < 1.0's KTO rule: only when prompt + completion exceed max_length, keep the prompt's last
    max_prompt_length tokens, the ones next to the response (a leading BOS stays in front). The collator then cuts
    the completion at max_length."""
    if (max_length is None or max_prompt_length is None or len(prompt_ids) <= max_prompt_length
            or len(prompt_ids) + completion_length <= max_length):
        return prompt_ids
    if bos_token_id is not None and prompt_ids[0] == bos_token_id and max_prompt_length > 1:
        return prompt_ids[:1] + prompt_ids[len(prompt_ids) - max_prompt_length + 1:]
    return prompt_ids[len(prompt_ids) - max_prompt_length:]


def _rotate_kl_completions(batch):
    # TRL's KL pairing, (x1, y_n), (x2, y1), ... within each batch-sized block (see KTOTrainer._prepare_dataset).
    batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
    return batch


class ChatalignKTOTrainer(KTOTrainer):
    """TRL's KTOTrainer with max_prompt_length, counted length handling (`data_counts[split]`) and padding-free
    batches.

    TRL tokenizes, drops rows whose prompt fills max_length, then builds the KL completions by rotating completions
    inside batch-sized blocks. Prompt truncation must run between tokenizing and those two steps (a truncated prompt
    must not be dropped, and a drop after the rotation would shift the blocks), so TRL runs with both steps off and
    they are redone here.

    padding_free (default: args.padding_free where the config has it): the completions and the KL completions are
    each one flattened row (PaddingFreeUnpairedCollator); the per-token outputs go back to the padded layout, where
    TRL's loss and metrics run unchanged (chatalign.train.padding_free).

    cache_prepared_data: the prepared rows (and their length counts) are kept on disk and a later run with the same
    rows, tokenizer and settings loads them (chatalign.train.prepared_data).
    """

    pair_rows = False  # nnPU: rows 2k and 2k+1 are a (real, generated) pair, kept or dropped together
    uses_kl_completions = True  # nnPU estimates KL from the batch itself and needs no mismatched-pair forward

    def __init__(self, *args, max_prompt_length: int | None = None, padding_free: bool | None = None,
                 cache_prepared_data: bool = False, prepared_data_cache_dir: str | None = None, **kwargs):
        # Read by _prepare_dataset, which runs inside super().__init__.
        self.max_prompt_length = max_prompt_length
        self.cache_prepared_data, self.prepared_data_cache_dir = cache_prepared_data, prepared_data_cache_dir
        self.data_counts: dict[str, dict[str, int]] = {}
        config = kwargs.get("args")
        if padding_free is None:
            padding_free = bool(getattr(config, "padding_free", False))
        if padding_free:
            if args or config is None:
                raise TypeError("ChatalignKTOTrainer(padding_free=True) takes model, args, ... as keyword arguments")
            if kwargs.get("data_collator") is not None:
                raise ValueError("padding_free=True flattens batches with its own collator; a data_collator cannot "
                                 "be given with it")
            kwargs["data_collator"] = PaddingFreeUnpairedCollator(max_length=config.max_length)
        # load_model fits them too, but a trainer given a model loaded elsewhere must not run TRL's GPU-sized tiles
        # on CPU: fitted before TRL's __init__, which runs the precompute_ref_log_probs pass.
        if config is not None:
            fit_fused_head_tiles(config.device)
        super().__init__(*args, **kwargs)
        self.padding_free = padding_free
        if padding_free and self._is_vision_dataset:
            raise ValueError("padding_free=True is not supported for vision datasets")
        if config is None:  # TRL made the default config: its device is known only now
            fit_fused_head_tiles(self.args.device)

    # -- padding-free: the forwards on the flattened rows, TRL's loss on the padded layout ---------------------------

    def compute_ref_log_probs(self, model, inputs):
        if not is_flat(inputs):
            return super().compute_ref_log_probs(model, inputs)
        with reference_forward(self):
            logps = flat_forward(model, inputs).log_probs.sum(-1)
            kl_logps = flat_forward(model, inputs, "KL_").log_probs.sum(-1) if self.calculate_KL else None
        return logps, kl_logps

    def _compute_kl_logps(self, model, batch):
        if not isinstance(model, FlatForward):
            return super()._compute_kl_logps(model, batch)
        if not self.calculate_KL:
            return None
        with torch.no_grad():
            return model.part("KL_").log_probs.sum(-1)

    def _compute_loss(self, model, inputs, return_outputs):
        if not is_flat(inputs):
            return super()._compute_loss(model, inputs, return_outputs)
        batch = padded_layout(inputs, ("", "KL_") if is_flat(inputs, "KL_") else ("",))
        if not self.precompute_ref_logps:  # the reference model, or the policy with its adapter disabled (PEFT)
            ref_logps, ref_kl_logps = self.compute_ref_log_probs(
                self.ref_model if self.ref_model is not None else self.model, inputs)
            batch["ref_logps"] = ref_logps
            if ref_kl_logps is not None:
                batch["ref_KL_logps"] = ref_kl_logps
        with reference_in_batch(self):
            return super()._compute_loss(FlatForward(model, inputs), batch, return_outputs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # Off for good under nnPU, which also spares compute_ref_log_probs the KL forward (set on a cache hit too).
        self.calculate_KL = self.calculate_KL and self.uses_kl_completions
        settings = {"max_length": args.max_length, "max_prompt_length": self.max_prompt_length,
                    "kl_batch_size": args.per_device_train_batch_size, "calculate_KL": self.calculate_KL,
                    "pair_rows": self.pair_rows, "desirable_weight": self.desirable_weight,
                    "undesirable_weight": self.undesirable_weight}  # the weights: TRL's balance warning
        dataset, counts = cached_trainer_dataset(
            self, "kto_tokens", dataset, processing_class, dataset_name, settings,
            lambda: self._prepare_uncached(dataset, processing_class, args, dataset_name))
        self.data_counts[dataset_name] = counts
        logger.info("%s rows after length handling (max_length=%s, max_prompt_length=%s): %s", dataset_name,
                    args.max_length, self.max_prompt_length, ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        if len(dataset) == 0:
            raise ValueError(f"no {dataset_name} row fits max_length={args.max_length}: {counts}")
        return dataset

    def _prepare_uncached(self, dataset, processing_class, args, dataset_name):
        from trl.trainer.utils import global_then_local_main_first

        # Off for TRL's pass (its rotation would run before our drops), back on for ours.
        calculate_kl = self.calculate_KL
        self.calculate_KL = False
        trl_args = copy.copy(args)  # only max_length differs; the Trainer keeps the original
        trl_args.max_length = None
        try:
            dataset = super()._prepare_dataset(dataset, processing_class, trl_args, dataset_name)
        finally:
            self.calculate_KL = calculate_kl
        with global_then_local_main_first():
            dataset, counts = self._fit_lengths(dataset, args, dataset_name)
            if self.calculate_KL:
                dataset = dataset.map(_rotate_kl_completions, batched=True, batch_size=args.per_device_train_batch_size,
                                      num_proc=args.dataset_num_proc, desc=f"Extracting KL {dataset_name} dataset")
        return dataset, counts

    def _fit_lengths(self, dataset, args, dataset_name):
        max_length, max_prompt = args.max_length, self.max_prompt_length
        bos = getattr(self._tokenizer, "bos_token_id", None)

        def fit(batch):
            out = {"prompt_ids": [], "_status": []}
            for prompt, completion in zip(batch["prompt_ids"], batch["completion_ids"], strict=True):
                cut = truncate_prompt_ids(prompt, len(completion), max_length, max_prompt, bos)
                total = len(cut) + len(completion)
                status = ("dropped: prompt fills max_length" if max_length is not None and len(cut) >= max_length
                          else "prompt truncated (max_prompt_length)" if len(cut) < len(prompt)
                          else "completion truncated to max_length" if max_length is not None and total > max_length
                          else "kept whole")
                out["prompt_ids"].append(cut)
                out["_status"].append(status)
            return out

        dataset = dataset.map(fit, batched=True, num_proc=args.dataset_num_proc,
                              desc=f"Fitting {dataset_name} rows to max_length")
        status = dataset["_status"]
        keep = [not s.startswith("dropped") for s in status]
        if self.pair_rows:  # a pair loses both rows or neither, so batches stay whole pairs
            for i in range(0, len(keep) - 1, 2):
                if keep[i] != keep[i + 1]:
                    status[i if keep[i] else i + 1] = "dropped: pair partner dropped"
                    keep[i] = keep[i + 1] = False
        counts = dict(Counter(status))
        dataset = dataset.remove_columns("_status")
        if not all(keep):
            dataset = dataset.select([i for i, k in enumerate(keep) if k])
        return dataset, counts


class NNPUKTOTrainer(ChatalignKTOTrainer):
    """KTOTrainer whose loss is `nnpu_kto_loss`: label True rows are real (positive), label False generated (unlabelled).

    The train and eval data must come ordered by `pair_real_generated` with an even batch size. The reference
    log-probs come from TRL (`compute_ref_log_probs`: ref model, PEFT with adapters disabled, or precomputed columns).
    """

    pair_rows = True
    uses_kl_completions = False

    def __init__(self, *args, prior: float, detach_kl: bool = False, **kwargs):
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior must lie strictly between 0 and 1, got {prior}")
        self.prior = prior
        self.detach_kl = detach_kl
        super().__init__(*args, **kwargs)

    def _completion_logps(self, model, batch):
        kwargs = {"output_router_logits": True} if self.aux_loss_enabled else {}
        if is_flat(batch):
            outputs = flat_forward(model, batch, **kwargs)
            return outputs.log_probs.sum(-1), outputs
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                        use_cache=False, fused_lm_head=True, **kwargs)
        # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens (as TRL).
        return outputs.log_probs[:, -(batch["input_ids"].size(1) - 1):].sum(-1), outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        batch = {k: (v.to(self.accelerator.device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        real = batch["label"].bool()
        n_real = int(real.sum())
        if n_real == 0 or n_real == len(real):
            raise ValueError(
                f"nnPU-KTO {mode} batch (step {self.state.global_step}) has {n_real} real and {len(real) - n_real} "
                "generated rows; each batch needs both. Order the data with pair_real_generated, keep the batch size "
                "even and train_sampling_strategy 'sequential'.")
        logps, outputs = self._completion_logps(model, batch)
        if self.precompute_ref_logps:
            ref_logps = batch["ref_logps"]
        else:
            ref = self.ref_model if self.ref_model is not None else self.model
            ref_logps, _ = self.compute_ref_log_probs(ref, batch)
        logratios = logps - ref_logps
        loss, metrics = nnpu_kto_loss(logratios[real], logratios[~real], self.beta, self.prior, self.detach_kl)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        self._record(mode, logps.detach(), logratios.detach(), real, metrics)
        return (loss, outputs) if return_outputs else loss

    def _mean(self, values: torch.Tensor) -> float:
        total = self.accelerator.gather(values.float().sum().reshape(1)).sum()
        count = self.accelerator.gather(torch.tensor([values.numel()], device=values.device)).sum()
        return (total / count).item()

    def _record(self, mode, logps, logratios, real, metrics):
        m = self._metrics[mode]
        m["rewards/real"].append(self.beta * self._mean(logratios[real]))
        m["rewards/generated"].append(self.beta * self._mean(logratios[~real]))
        m["rewards/margins"].append(m["rewards/real"][-1] - m["rewards/generated"][-1])
        m["logps/real"].append(self._mean(logps[real]))
        m["logps/generated"].append(self._mean(logps[~real]))
        m["kl/real"].append(self._mean(metrics["kl_real"]))
        m["kl/gen"].append(self._mean(metrics["kl_gen"]))
        m["nnpu/defit"].append(self._mean(metrics["defit"]))  # averaged over the logging window: share of defit steps
        m["nnpu/positive_risk"].append(self._mean(metrics["positive_risk"]))
        m["nnpu/negative_risk"].append(self._mean(metrics["negative_risk"]))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Evaluation needs the loss and metrics only; TRL's default would run an extra forward for full logits.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
