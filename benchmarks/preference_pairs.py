"""The preference-training pairs: DPO and KTO padding-free vs padded, and DPO with a precomputed vs an online
reference (and the cache reload vs recomputing). Rows are word-level token ids of the workload's lengths."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    HIDDEN,
    VOCAB,
    alternate,
    bench_model,
    clip_for,
    lengths,
    non_embedding_params,
    record,
    varlen_available,
)

# --------------------------------------------------------------------------------------------------------------------
# Reference log-probs: precomputed vs online reference; the cache reload vs recomputing


def reference_reuse(quick: bool, peak: float) -> dict:
    """Both trainers as the recipes run them (padding-free, varlen attention, the fitted fused head). The reference's
    forward is timed alone too: (precomputed step + that forward) / precomputed step is what skipping it can save."""
    from datasets import Dataset
    from trl import DPOConfig

    from chatalign.train.dpo.reference import RefLogps, compute_ref_logps, read_ref_logps_file
    from chatalign.train.dpo.trainer import ChatalignDPOTrainer

    tokenizer = _word_tokenizer()
    n = 4 if quick else 16
    rows = _preference_rows(n, seed=3, clip=clip_for(quick))
    work = Path(tempfile.mkdtemp())
    attn = "chatalign_varlen" if varlen_available() else "sdpa"
    args = DPOConfig(output_dir=str(work), report_to=[], use_cpu=True, bf16=False, per_device_train_batch_size=4,
                     max_length=1024, disable_tqdm=True, activation_checkpointing=False, padding_free=True)
    policy, reference = bench_model(attn), bench_model(attn, seed=1)
    path = work / "ref.parquet"
    start = time.perf_counter()
    compute_ref_logps(reference, tokenizer, args, [Dataset.from_list(rows)], path, RefLogps({}, set(), {}), {"x": 1})
    recompute = time.perf_counter() - start
    start = time.perf_counter()
    cached = read_ref_logps_file(path)
    reload = time.perf_counter() - start
    with_ref = [{**r, "ref_chosen_logps": cached.logps[k][0], "ref_rejected_logps": cached.logps[k][1]}
                for r, k in zip(rows, _pair_keys(rows), strict=True)]
    online = ChatalignDPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer)
    pre_args = copy.deepcopy(args)
    pre_args.precompute_ref_log_probs = True
    given = ChatalignDPOTrainer(model=policy, ref_model=None, args=pre_args,
                                train_dataset=Dataset.from_list(with_ref), processing_class=tokenizer)
    batches = {name: t.data_collator([t.train_dataset[i] for i in range(min(4, n))]) for name, t in
               (("online", online), ("precomputed", given))}

    def step(trainer, batch):
        policy.zero_grad(set_to_none=True)
        trainer.compute_loss(policy, batch).backward()

    times = alternate({"online": lambda: step(online, batches["online"]),
                       "precomputed": lambda: step(given, batches["precomputed"]),
                       "reference_forward": lambda: online.compute_ref_log_probs(reference, batches["online"])},
                      repeats=1 if quick else 3)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    ratio = seconds["online"] / seconds["precomputed"]
    ceiling = (seconds["precomputed"] + seconds["reference_forward"]) / seconds["precomputed"]
    reload_ratio = recompute / reload
    return record("DPO step, precomputed vs online reference", f"{seconds['precomputed']:.2f} s",
                  f"{seconds['online']:.2f} s", ratio, ">= 1.25x; cache reload >= 20x",
                  ratio >= 1.25 and reload_ratio >= 20, attention=attn, padding_free=True,
                  reference_forward_s=seconds["reference_forward"], ceiling=ceiling, of_ceiling=ratio / ceiling,
                  cache_reload_vs_recompute=reload_ratio, recompute_s=recompute, reload_s=reload, pairs=n)


def _word_tokenizer():
    """A word-level tokenizer over ids: "t<i>" is token i, so any id sequence round-trips; ChatML as the template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB - 6)}
    for i, special in enumerate(["<pad>", "<|im_start|>", "<|im_end|>", "<unk>", "<s>", "</s>"]):
        vocab[special] = VOCAB - 6 + i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   unk_token="<unk>", bos_token="<s>")
    fast.chat_template = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
    return fast


def _words(rng, n: int) -> str:
    return " ".join(f"t{i}" for i in rng.integers(0, VOCAB - 6, n))


def _preference_rows(n: int, seed: int, clip: int = 1024) -> list[dict]:
    """Pairs whose prompt + response lengths follow the workload's distribution (prompt a third of it)."""
    rng = np.random.default_rng(seed)
    rows = []
    for total_c, total_r in zip(lengths(n, seed, clip), lengths(n, seed + 100, clip), strict=True):
        prompt = max(8, min(total_c, total_r) // 3)
        rows.append({"prompt": [{"role": "user", "content": _words(rng, prompt)}],
                     "chosen": [{"role": "assistant", "content": _words(rng, max(4, total_c - prompt))}],
                     "rejected": [{"role": "assistant", "content": _words(rng, max(4, total_r - prompt))}]})
    return rows


def _pair_keys(rows):
    from chatalign.store import pair_id

    return [pair_id(r["prompt"], r["chosen"], r["rejected"]) for r in rows]


# --------------------------------------------------------------------------------------------------------------------
# DPO: padding-free vs padded


def _dpo_trainer_and_batch(rows: list[dict], padding_free: bool, attn: str):
    """A DPO trainer with an online reference over `rows`, and all of them collated as one batch."""
    from datasets import Dataset
    from trl import DPOConfig

    from chatalign.train.dpo.trainer import ChatalignDPOTrainer

    args = DPOConfig(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, bf16=False, disable_tqdm=True,
                     per_device_train_batch_size=len(rows), max_length=2048, activation_checkpointing=False,
                     padding_free=padding_free)
    trainer = ChatalignDPOTrainer(model=bench_model(attn), ref_model=bench_model(attn, seed=1), args=args,
                                  train_dataset=Dataset.from_list(rows), processing_class=_word_tokenizer())
    return trainer, trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])


def dpo_padding_free(quick: bool, peak: float) -> dict:
    n = 4 if quick else 8
    rows = _preference_rows(n, seed=5, clip=clip_for(quick))
    attn = "chatalign_varlen" if varlen_available() else "sdpa"
    trainers = {"padded": _dpo_trainer_and_batch(rows, False, "sdpa"),
                "padding_free": _dpo_trainer_and_batch(rows, True, attn)}

    def step(name):
        trainer, batch = trainers[name]
        trainer.model.zero_grad(set_to_none=True)
        trainer.compute_loss(trainer.model, batch).backward()

    times = alternate({name: (lambda k=name: step(k)) for name in trainers}, repeats=1 if quick else 3)
    completions = sum(len(r["chosen"][0]["content"].split()) + len(r["rejected"][0]["content"].split())
                      for r in rows)
    real = completions + sum(2 * len(r["prompt"][0]["content"].split()) for r in rows)
    ratio = statistics.median(times["padded"]) / statistics.median(times["padding_free"])
    # Policy forward + backward (6) and reference forward (2): the backbone over every real token, the LM head over
    # the completions' positions only, the ones TRL's fused head projects (the prompt's are not scored).
    flops = (6 + 2) * (non_embedding_params(trainers["padded"][0].model) * real + HIDDEN * VOCAB * completions)
    mfu = {name: flops / statistics.median(t) / peak for name, t in times.items()}
    return record("DPO step throughput, padding-free vs padded", f"{statistics.median(times['padding_free']):.2f} s",
                  f"{statistics.median(times['padded']):.2f} s", ratio, ">= 1.3x", ratio >= 1.3, attention=attn,
                  pairs=n, mfu_padding_free=mfu["padding_free"], mfu_padded=mfu["padded"],
                  mfu_count="(6 policy + 2 reference) x (non-embedding x real tokens + LM head x completion "
                  "tokens); tokens counted as words, the template's few tokens left out")


# --------------------------------------------------------------------------------------------------------------------
# KTO: padding-free vs padded


def kto_padding_free(quick: bool, peak: float) -> dict:
    from datasets import Dataset
    from trl import KTOConfig

    from chatalign.train.kto import ChatalignKTOTrainer

    tokenizer = _word_tokenizer()
    n = 4 if quick else 8
    # Unpaired rows of the same length distribution: each pair's chosen (desirable) and rejected (undesirable).
    rows = [{"prompt": r["prompt"], "completion": r[key], "label": key == "chosen"}
            for r in _preference_rows(n // 2, seed=7, clip=clip_for(quick)) for key in ("chosen", "rejected")]
    attn = "chatalign_varlen" if varlen_available() else "sdpa"
    trainers = {}
    for name, flag in (("padded", False), ("padding_free", True)):
        args = KTOConfig(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, bf16=False, disable_tqdm=True,
                         per_device_train_batch_size=n, max_length=2048, activation_checkpointing=False)
        policy, reference = bench_model(attn if flag else "sdpa"), bench_model(attn if flag else "sdpa", seed=1)
        trainer = ChatalignKTOTrainer(model=policy, ref_model=reference, args=args, padding_free=flag,
                                      train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        trainers[name] = (trainer, trainer.data_collator([trainer.train_dataset[i] for i in range(n)]))
    kl = trainers["padded"][0].calculate_KL

    def step(name):
        trainer, batch = trainers[name]
        trainer.model.zero_grad(set_to_none=True)
        trainer.compute_loss(trainer.model, batch).backward()

    times = alternate({name: (lambda k=name: step(k)) for name in trainers}, repeats=1 if quick else 3)
    ratio = statistics.median(times["padded"]) / statistics.median(times["padding_free"])
    return record("KTO step throughput, padding-free vs padded", f"{statistics.median(times['padding_free']):.2f} s",
                  f"{statistics.median(times['padded']):.2f} s", ratio, ">= 1.3x", ratio >= 1.3, attention=attn,
                  rows=n, kl_completions=kl)


# --------------------------------------------------------------------------------------------------------------------
# TRL's fused LM head on CPU: scoring the labelled positions only (chatalign's fit) vs every position (TRL off Triton)


def fused_head_positions(quick: bool, peak: float) -> dict:
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as trl_utils

    n = 4 if quick else 8
    attn = "chatalign_varlen" if varlen_available() else "sdpa"
    trainer, batch = _dpo_trainer_and_batch(_preference_rows(n, seed=5, clip=clip_for(quick)), True, attn)
    compact, every = trl_utils._use_triton, kernel._use_triton  # the trainer installed chatalign's CPU choice
    losses = {}

    def step(name, decide):
        trl_utils._use_triton = decide
        try:
            trainer.model.zero_grad(set_to_none=True)
            loss = trainer.compute_loss(trainer.model, batch)
            loss.backward()
            losses[name] = float(loss)
        finally:
            trl_utils._use_triton = compact

    times = alternate({"labelled": lambda: step("labelled", compact), "every": lambda: step("every", every)},
                      repeats=1 if quick else 3)
    a, b = statistics.median(times["labelled"]), statistics.median(times["every"])
    same = abs(losses["labelled"] - losses["every"]) <= 1e-5
    return record("DPO step, fused LM head scoring labelled positions vs every position (CPU)", f"{a:.2f} s",
                  f"{b:.2f} s", b / a, "> 1x, same loss (chatalign's own pair, not the issue's)", b / a > 1 and same,
                  same_loss=same, pairs=n, padding_free=True, attention=attn)
