"""TRL's DPOTrainer with per-pair loss weights (``rm_weight_column``, LION's wis), reference log-probs given with
the data, and padding-free batches (chatalign.train.padding_free)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from chatalign.train.chunked_logps import fit_fused_head_tiles
from chatalign.train.dpo.arguments import UNWEIGHTABLE_LOSS_TYPES
from chatalign.train.dpo.importance import MU_COLUMNS, wis_weight
from chatalign.train.dpo.reference import REF_COLUMNS
from chatalign.train.dpo.selection import PAIR_WEIGHT
from chatalign.train.padding_free import (
    FlatForward,
    PaddingFreePreferenceCollator,
    is_flat,
    padded_layout,
    reference_in_batch,
)
from chatalign.train.prepared_data import cached_trainer_dataset


def _with_pair_columns(out, examples):
    out[PAIR_WEIGHT] = torch.tensor([float(e.get(PAIR_WEIGHT, 1.0)) for e in examples])
    if examples and MU_COLUMNS[0] in examples[0]:
        for name in MU_COLUMNS:
            out[name] = torch.tensor([float(e[name]) for e in examples], dtype=torch.float64)
    return out


@dataclass
class WeightedPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator plus the per-pair weight (1.0 when the rows carry none) and, where the rows carry
    them, the wis log-probs of the generator."""

    def torch_call(self, examples):
        return _with_pair_columns(super().torch_call(examples), examples)


@dataclass
class WeightedPaddingFreeCollator(PaddingFreePreferenceCollator):
    """The padding-free preference collator plus the columns of WeightedPreferenceCollator."""

    def torch_call(self, examples):
        return _with_pair_columns(super().torch_call(examples), examples)


def per_pair_losses(loss_type: str, trainer, chosen_scores, rejected_scores, chosen_logratios, rejected_logratios,
                    completion_mask):
    """TRL 1.16's per-pair loss of one separable loss type, written as in `DPOTrainer._compute_loss` (same float
    operations in the same order, so weights of 1 reproduce TRL's loss bit for bit)."""
    beta = trainer.beta
    delta_score = chosen_scores - rejected_scores
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta_score)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta_score)
    if loss_type in ("ipo", "sigmoid_norm"):
        chosen_mask, rejected_mask = completion_mask.chunk(2, dim=0)
        chosen_avg_score = chosen_scores / chosen_mask.sum(dim=1).clamp(min=1.0)
        rejected_avg_score = rejected_scores / rejected_mask.sum(dim=1).clamp(min=1.0)
        delta = chosen_avg_score - rejected_avg_score
        return (delta - 1 / (2 * beta)) ** 2 if loss_type == "ipo" else -F.logsigmoid(beta * delta)
    if loss_type == "exo_pair":
        epsilon = torch.tensor(trainer.label_smoothing, device=delta_score.device)
        qw, log_qw = torch.sigmoid(beta * delta_score), F.logsigmoid(beta * delta_score)
        ql, log_ql = torch.sigmoid(-beta * delta_score), F.logsigmoid(-beta * delta_score)
        return qw * (log_qw - torch.log1p(-epsilon)) + ql * (log_ql - torch.log(epsilon))
    if loss_type == "nca_pair":
        chosen_rewards, rejected_rewards = beta * chosen_logratios, beta * rejected_logratios
        return (-F.logsigmoid(chosen_rewards) - 0.5 * F.logsigmoid(-chosen_rewards)
                - 0.5 * F.logsigmoid(-rejected_rewards))
    if loss_type == "robust":
        smoothing = trainer.label_smoothing
        clean_loss_term = -(1 - smoothing) * F.logsigmoid(beta * delta_score)
        flipped_loss_term = -smoothing * F.logsigmoid(-beta * delta_score)
        return (clean_loss_term - flipped_loss_term) / (1 - 2 * smoothing)
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * chosen_logratios) - F.logsigmoid(-(beta * rejected_logratios))
    if loss_type == "sppo_hard":
        return (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
    if loss_type == "apo_zero":
        return (1 - torch.sigmoid(beta * chosen_logratios)) + torch.sigmoid(beta * rejected_logratios)
    if loss_type == "apo_down":
        margin = chosen_logratios - rejected_logratios
        return torch.sigmoid(beta * chosen_logratios) + (1 - torch.sigmoid(beta * margin))
    if loss_type == "discopop":
        logits = delta_score * beta
        modulation = torch.sigmoid(logits / trainer.args.discopop_tau)
        return -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation
    reason = UNWEIGHTABLE_LOSS_TYPES.get(loss_type, "not a TRL DPO loss")
    raise ValueError(f"loss_type '{loss_type}' has no per-pair form: {reason}")


class ChatalignDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer plus two things.

    * Given reference log-probs: with precompute_ref_log_probs=True, a dataset that already carries
      ref_chosen_logps / ref_rejected_logps is used as is (TRL would recompute and then fail on duplicate
      columns), so no reference model is ever loaded.
    * weighted=True: each pair's loss is multiplied by its weight (column PAIR_WEIGHT, 1.0 where absent)
      before the batch mean, for every loss type with a per-pair form (not aot, aot_unpaired, sft). TRL's
      loss is computed inline, so `_compute_loss` is re-expressed here with the same operations; the logged
      metrics are TRL's.
    * wis_gamma: LION's wis weight (chatalign.train.dpo.importance.wis_weight) from the policy's current log-probs
      and the generator's (columns MU_COLUMNS) multiplies each pair's loss too; its batch mean is logged as
      wis/weight. Implies weighted=True.
    * args.padding_free: each batch is one flattened row (PaddingFreePreferenceCollator), for the policy and the
      reference forward alike; the per-token outputs go back to the padded layout, where the loss (TRL's, or the
      weighted one) and the metrics are computed as for a padded batch. TRL 1.16 switches padding_free off with a
      warning; the flag is taken before that and kept as `self.padding_free` (and in args).
    * cache_prepared_data: TRL's tokenized rows are kept on disk and a later run with the same rows, tokenizer and
      settings loads them (chatalign.train.prepared_data).
    """

    def __init__(self, *args, weighted: bool = False, wis_gamma: float | None = None,
                 cache_prepared_data: bool = False, prepared_data_cache_dir: str | None = None, **kwargs):
        self.wis_gamma = wis_gamma
        # Read by _prepare_dataset, which runs inside super().__init__.
        self.cache_prepared_data, self.prepared_data_cache_dir = cache_prepared_data, prepared_data_cache_dir
        weighted = weighted or wis_gamma is not None
        self.weighted = weighted
        config = kwargs.get("args")
        padding_free = bool(getattr(config, "padding_free", False))
        if (weighted or padding_free) and (args or "args" not in kwargs or "processing_class" not in kwargs):
            raise TypeError(f"ChatalignDPOTrainer({'weighted' if weighted else 'padding_free'}=True) takes model, "
                            "args, processing_class, ... as keyword arguments")
        if padding_free:
            if kwargs.get("data_collator") is not None:
                raise ValueError("padding_free=True flattens batches with its own collator; a data_collator cannot "
                                 "be given with it")
            collator = WeightedPaddingFreeCollator if weighted else PaddingFreePreferenceCollator
            kwargs["data_collator"] = collator(max_length=config.max_length, truncation_mode=config.truncation_mode)
        if weighted:
            bad = [t for t in kwargs["args"].loss_type if t in UNWEIGHTABLE_LOSS_TYPES]
            if bad:
                raise ValueError(f"per-pair weights do not apply to loss_type '{bad[0]}': "
                                 f"{UNWEIGHTABLE_LOSS_TYPES[bad[0]]}")
            if kwargs.get("data_collator") is None:
                tokenizer = getattr(kwargs["processing_class"], "tokenizer", kwargs["processing_class"])
                config = kwargs["args"]
                kwargs["data_collator"] = WeightedPreferenceCollator(
                    pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                    else tokenizer.eos_token_id,
                    max_length=config.max_length, truncation_mode=config.truncation_mode,
                    pad_to_multiple_of=config.pad_to_multiple_of,
                )  # fmt: skip
        if padding_free:
            config.padding_free = False  # TRL would warn that it falls back to padding; this trainer does not
        # load_model fits them too, but a trainer given a model loaded elsewhere must not run TRL's GPU-sized tiles
        # on CPU: fitted before TRL's __init__, which runs the precompute_ref_log_probs pass.
        if config is not None:
            fit_fused_head_tiles(config.device)
        try:
            super().__init__(*args, **kwargs)
        finally:
            if padding_free:
                config.padding_free = True
        self.padding_free = padding_free
        if padding_free and self._is_vision_dataset:
            raise ValueError("padding_free=True is not supported for vision datasets")
        if config is None:  # TRL made the default config: its device is known only now
            fit_fused_head_tiles(self.args.device)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        trl_prepare = super()._prepare_dataset  # TRL 1.16's reads these two settings of args, and the tokenizer
        settings = {"max_length": args.max_length, "truncation_mode": args.truncation_mode}
        prepared, _ = cached_trainer_dataset(
            self, "dpo_tokens", dataset, processing_class, dataset_name, settings,
            lambda: (trl_prepare(dataset, processing_class, args, dataset_name), {}))
        return prepared

    def _precompute_ref_logps(self, dataset, name, batch_size):
        if set(REF_COLUMNS) <= set(dataset.column_names):
            chosen = np.asarray(dataset[REF_COLUMNS[0]], dtype=np.float64)
            if np.isnan(chosen).any():
                index = int(np.flatnonzero(np.isnan(chosen))[0])
                raise ValueError(f"{name} row {index}: the precomputed file marks this pair as dropped by "
                                 "max_length, but this run keeps it; recompute the file")
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.weighted and PAIR_WEIGHT not in self._signature_columns:  # survive remove_unused_columns
            self._signature_columns = [*self._signature_columns, PAIR_WEIGHT, *MU_COLUMNS]

    def compute_ref_log_probs(self, model, inputs):
        # The precompute pass collates with the weighted collator too; the weight must not reach the model.
        inputs = {k: v for k, v in inputs.items() if k != PAIR_WEIGHT and k not in MU_COLUMNS}
        if is_flat(inputs):  # TRL's computation on the padded layout, the forward on the flattened row
            return super().compute_ref_log_probs(FlatForward(model, inputs), padded_layout(inputs))
        return super().compute_ref_log_probs(model, inputs)

    def _compute_loss(self, model, inputs, return_outputs):
        if not is_flat(inputs):
            return self._padded_loss(model, inputs, return_outputs)
        # Padding-free: the reference log-probs of the flattened batch first (unless given), then the loss code of a
        # padded batch, whose policy forward runs on the flattened row.
        batch = padded_layout(inputs)
        if not self.precompute_ref_logps:  # the reference model, or the policy with its adapter disabled (PEFT)
            batch[REF_COLUMNS[0]], batch[REF_COLUMNS[1]] = self.compute_ref_log_probs(
                self.ref_model if self.ref_model is not None else self.model, inputs)
        with reference_in_batch(self):
            return self._padded_loss(FlatForward(model, inputs), batch, return_outputs)

    def _padded_loss(self, model, inputs, return_outputs):
        if not self.weighted:
            return super()._compute_loss(model, inputs, return_outputs)
        inputs = dict(inputs)
        weight = inputs.pop(PAIR_WEIGHT)
        mu_logps = [inputs.pop(name, None) for name in MU_COLUMNS]
        mode = "train" if self.model.training else "eval"
        non_model = {"completion_mask", *REF_COLUMNS}
        model_kwargs = {k: v for k, v in inputs.items() if k not in non_model}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        shift_completion_mask = completion_mask[..., 1:]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = shift_completion_mask.size(1)
        per_token_logps = outputs.log_probs[:, -seq_len:]
        logps = self._sequence_logps(per_token_logps, shift_completion_mask)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs[REF_COLUMNS[0]], inputs[REF_COLUMNS[1]]
        else:  # the reference model, or the policy with its adapter disabled (PEFT)
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(
                self.ref_model if self.ref_model is not None else self.model, inputs)
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        chosen_scores, rejected_scores = self._f_divergence_scores(chosen_logratios, rejected_logratios)

        weight = weight.to(device=chosen_logps.device, dtype=chosen_logps.dtype)
        if self.wis_gamma is not None:
            if mu_logps[0] is None:
                raise ValueError("wis_gamma is set but the batch has no generator log-probs "
                                 f"({', '.join(MU_COLUMNS)}): give the rows a wis_importance_file")
            mu_chosen, mu_rejected = (m.to(device=chosen_logps.device, dtype=chosen_logps.dtype) for m in mu_logps)
            wis = wis_weight(chosen_logps, rejected_logps, mu_chosen, mu_rejected, self.wis_gamma)
            self._metrics[mode]["wis/weight"].append(self.accelerator.gather(wis).mean().item())
            weight = weight * wis
        loss = 0.0
        for loss_type, loss_weight in zip(self.loss_types, self.loss_weights, strict=True):
            per_sequence_loss = per_pair_losses(loss_type, self, chosen_scores, rejected_scores,
                                                chosen_logratios, rejected_logratios, completion_mask)
            if self.use_weighting:  # WPO (TRL's Eq. 2), itself a per-pair factor
                completion_lengths = shift_completion_mask.sum(dim=1).clamp_min(1)
                with torch.no_grad():
                    aligned = (per_token_logps - outputs.log_sum_sq_probs[:, -seq_len:]) * shift_completion_mask
                wpo = torch.exp(aligned.sum(dim=1) / completion_lengths)
                wpo_chosen, wpo_rejected = wpo.chunk(2, dim=0)
                per_sequence_loss *= wpo_chosen * wpo_rejected
            loss += (weight * per_sequence_loss).mean() * loss_weight
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())
        self._log_batch_metrics(mode, inputs, outputs, seq_len, shift_completion_mask, chosen_logps,
                                rejected_logps, chosen_logratios, rejected_logratios)
        if return_outputs:  # as TRL: the fused head built no logits, so compute them for compute_metrics
            with torch.no_grad():
                outputs = model(**model_kwargs)
            return loss, outputs
        return loss

    def _sequence_logps(self, per_token_logps, shift_completion_mask):
        if self.ld_alpha is None:
            return per_token_logps.sum(dim=1)
        # LD-DPO: tokens past the shorter completion of the pair count ld_alpha times.
        comp_pos = shift_completion_mask.cumsum(dim=1)
        comp_lens = shift_completion_mask.sum(dim=1).long()
        chosen_lens, rejected_lens = comp_lens.chunk(2, dim=0)
        shared_lens = torch.minimum(chosen_lens, rejected_lens)
        shared_lens = torch.cat([shared_lens, shared_lens], dim=0).to(per_token_logps.device)
        shared_mask = (comp_pos > 0) & (comp_pos <= shared_lens.unsqueeze(1))
        tail_mask = comp_pos > shared_lens.unsqueeze(1)
        return (per_token_logps * shared_mask).sum(dim=1) + self.ld_alpha * (per_token_logps * tail_mask).sum(dim=1)

    def _f_divergence_scores(self, chosen_logratios, rejected_logratios):
        kind = self.f_divergence_type
        if kind == "reverse_kl" or (kind == "alpha_divergence" and abs(self.f_alpha_divergence_coef - 1.0) < 1e-6):
            return chosen_logratios, rejected_logratios
        if kind == "forward_kl":
            return 1 - torch.exp(-chosen_logratios), 1 - torch.exp(-rejected_logratios)
        if kind == "js_divergence":
            return math.log(2) + F.logsigmoid(chosen_logratios), math.log(2) + F.logsigmoid(rejected_logratios)
        if kind == "alpha_divergence":
            alpha = self.f_alpha_divergence_coef
            coef = 1.0 / (alpha - 1.0)
            out = []
            for logratios in (chosen_logratios, rejected_logratios):
                t = (alpha - 1.0) * logratios
                clamp_max = {torch.float16: 11.0, torch.bfloat16: 80.0, torch.float32: 80.0}[t.dtype]
                out.append((torch.exp(torch.clamp(t.float(), max=clamp_max)) - 1.0).to(t.dtype) * coef)
            return out[0], out[1]
        raise ValueError(f"Unknown f_divergence_type: {kind}")

    def _log_batch_metrics(self, mode, inputs, outputs, seq_len, shift_completion_mask, chosen_logps,
                           rejected_logps, chosen_logratios, rejected_logratios):
        """TRL's per-batch metrics, computed as in `DPOTrainer._compute_loss`."""
        gather_sum = lambda value: self.accelerator.gather_for_metrics(value).sum()  # noqa: E731
        metrics = self._metrics[mode]
        mask = shift_completion_mask
        entropy_sum = gather_sum((outputs.entropy[:, -seq_len:].detach() * mask).sum())
        total_tokens = gather_sum(mask.sum())
        metrics["entropy"].append((entropy_sum / total_tokens).item() if total_tokens > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += gather_sum(inputs["attention_mask"].sum()).item() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        chosen_mean_logits, rejected_mean_logits = outputs.mean_logits[:, -seq_len:].chunk(2, dim=0)
        chosen_mask, rejected_mask = mask.chunk(2, dim=0)
        for name, mean_logits, part_mask in (("chosen", chosen_mean_logits, chosen_mask),
                                             ("rejected", rejected_mean_logits, rejected_mask)):
            total_logits = gather_sum(mean_logits[part_mask.bool()].sum()).item()
            total = gather_sum(part_mask.sum()).item()
            metrics[f"logits/{name}"].append(total_logits / total if total > 0 else 0.0)
        chosen_is_top1, _ = outputs.is_top1[:, -seq_len:].chunk(2, dim=0)
        correct = gather_sum((chosen_is_top1 & chosen_mask.bool()).sum())
        total = gather_sum(chosen_mask.sum())
        metrics["mean_token_accuracy"].append((correct / total).item() if total > 0 else 0.0)
        chosen_rewards = self.beta * chosen_logratios.detach()
        rejected_rewards = self.beta * rejected_logratios.detach()
        gather = self.accelerator.gather
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps).mean().item())
