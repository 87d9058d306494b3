"""The benchmark pairs: each runs two code paths in one process (alternating, so drift hits both) and returns one
record {pair, a, b, ratio, goal, met, detail}. Numbers that could not be measured are None with the reason.

Workload (every pair that trains): a Llama built from config, 4 layers, hidden 256, intermediate 1024, 4 heads,
vocab 32,000, fp32, torch threads 2; sequence lengths lognormal with median 300 tokens (mu = ln 300, sigma 0.75),
clipped to [16, 1024], seeded, token ids uniform over the vocabulary.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VOCAB, HIDDEN, LAYERS, INTERMEDIATE, HEADS = 32_000, 256, 4, 1024, 4


def record(pair, a, b, ratio, goal, met, **detail):
    return {"pair": pair, "a": a, "b": b, "ratio": ratio, "goal": goal, "met": met, "detail": detail}


def lengths(n: int, seed: int, clip: int = 1024) -> list[int]:
    """`n` lengths of the workload's distribution; --quick clips them at 256 (the smallest size)."""
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.lognormal(math.log(300), 0.75, n), 16, clip)]


def clip_for(quick: bool) -> int:
    return 256 if quick else 1024


def bench_model(attn: str = "sdpa", seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                         max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=0)
    config._attn_implementation = attn
    return LlamaForCausalLM(config)


def non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)


def matmul_peak(seconds: float = 2.0) -> float:
    """The machine's fp32 matmul FLOP/s (1024^3 products), measured now."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * 1024**3 * count / (time.perf_counter() - start)


def alternate(paths: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each path, run in turn `repeats` times after one warm-up each."""
    times = {name: [] for name in paths}
    for fn in paths.values():
        fn()
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------------------------------------------------
# SFT: padding-free vs padded


def sft_padding_free(quick: bool, peak: float) -> dict:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = lengths(8, seed=1, clip=clip_for(quick))
    rng = np.random.default_rng(2)
    examples = [{"input_ids": rng.integers(1, VOCAB, n).tolist()} for n in rows]
    attn = "chatalign_varlen" if _varlen_available() else "sdpa"
    models = {"padded": bench_model("sdpa"), "padding_free": bench_model(attn)}
    batches = {"padded": DataCollatorForLanguageModeling(pad_token_id=0)(examples),
               "padding_free": DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)}

    def step(name):
        model, batch = models[name], batches[name]
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()

    times = alternate({name: (lambda n=name: step(n)) for name in models}, repeats=2 if quick else 3)
    real = sum(rows)
    padded_tokens = len(rows) * max(rows)
    pad_fraction = 1 - real / padded_tokens
    ideal = 1 / (1 - pad_fraction)
    a, b = statistics.median(times["padding_free"]), statistics.median(times["padded"])
    ratio = b / a  # real-token throughput ratio: same real tokens in both
    flops = 6 * non_embedding_params(models["padded"]) * real + 6 * HIDDEN * VOCAB * real
    mfu = {name: flops / statistics.median(t) / peak for name, t in times.items()}
    return record("SFT real-token throughput, padding-free vs padded", f"{real / a:,.0f} tok/s",
                  f"{real / b:,.0f} tok/s", ratio, f">= 0.95 x ideal {ideal:.2f}", ratio >= 0.95 * ideal,
                  pad_fraction=pad_fraction, ideal=ideal, of_ideal=ratio / ideal, attention=attn,
                  mfu_padding_free=mfu["padding_free"], mfu_padded=mfu["padded"], mfu_goal=">= 0.30 padding-free",
                  lengths=rows)


def _varlen_available() -> bool:
    try:
        import chatalign.train.varlen  # noqa: F401  (registers the attention implementation)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------------------------------
# Loss memory: TRL's fused (tiled) LM head vs full logits, each in a fresh process


MEMORY_CHILD = """
import resource, sys, torch
sys.path.insert(0, {benchmarks!r})
from pairs import bench_model
torch.set_num_threads(2)
model = bench_model()
tokens = torch.randint(1, 32000, ({rows}, 1024))
labels = tokens.clone()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # imports and weights: the same for every mode
if {mode!r} == "chunked":
    from chatalign.train.chunked_logps import causal_lm_token_logps
    loss = -causal_lm_token_logps(model, tokens, labels).mean()
elif {mode!r} == "trl_fused":
    from trl.trainer.utils import add_fused_lm_head
    add_fused_lm_head(model)
    loss = model(input_ids=tokens, labels=labels, fused_lm_head=True).loss
else:
    logits = model(input_ids=tokens).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 32000), labels[:, 1:].reshape(-1))
loss.backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base, float(loss))
"""


def loss_memory(quick: bool, peak: float) -> dict:
    rss = {}
    for mode in ("full", "chunked", "trl_fused"):
        code = MEMORY_CHILD.format(benchmarks=str(Path(__file__).parent), mode=mode, rows=4)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rss[mode] = int(out.stdout.split()[0]) / 1024  # KiB -> MiB
    if rss["full"] <= 0:  # the step never rose above the loading's high-water mark: nothing to compare
        return record("Loss peak memory, chunked vs full logits", None, None, None, "<= 0.5", None,
                      missing="the full-logits step stayed under the process's earlier peak")
    ratio = rss["chunked"] / rss["full"]
    return record("Loss peak memory, chunked vs full logits (step's max RSS above the loaded model)", f"{rss['chunked']:,.0f} MiB",
                  f"{rss['full']:,.0f} MiB", ratio, "<= 0.5", ratio <= 0.5,
                  batch="4 x 1024 tokens, vocab 32k, forward + backward",
                  chunked="chatalign.train.chunked_logps", trl_fused_mib=rss["trl_fused"],
                  trl_fused_vs_full=rss["trl_fused"] / rss["full"])


# --------------------------------------------------------------------------------------------------------------------
# Reference log-probs: precomputed vs online reference; the cache reload vs recomputing


def reference_reuse(quick: bool, peak: float) -> dict:
    from datasets import Dataset
    from trl import DPOConfig

    from chatalign.train.dpo.reference import RefLogps, compute_ref_logps, read_ref_logps_file
    from chatalign.train.dpo.trainer import ChatalignDPOTrainer

    tokenizer = _word_tokenizer()
    n = 4 if quick else 16
    rows = _preference_rows(n, seed=3, clip=clip_for(quick))
    work = Path(tempfile.mkdtemp())
    args = DPOConfig(output_dir=str(work), report_to=[], use_cpu=True, bf16=False, per_device_train_batch_size=4,
                     max_length=1024, disable_tqdm=True, activation_checkpointing=False)
    policy, reference = bench_model(), bench_model(seed=1)
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
                       "precomputed": lambda: step(given, batches["precomputed"])}, repeats=2 if quick else 3)
    ratio = statistics.median(times["online"]) / statistics.median(times["precomputed"])
    reload_ratio = recompute / reload
    return record("DPO step, precomputed vs online reference", f"{statistics.median(times['precomputed']):.2f} s",
                  f"{statistics.median(times['online']):.2f} s", ratio, ">= 1.25x; cache reload >= 20x",
                  ratio >= 1.25 and reload_ratio >= 20, cache_reload_vs_recompute=reload_ratio,
                  recompute_s=recompute, reload_s=reload, pairs=n)


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


def dpo_padding_free(quick: bool, peak: float) -> dict:
    from datasets import Dataset
    from trl import DPOConfig

    from chatalign.train.dpo.trainer import ChatalignDPOTrainer

    tokenizer = _word_tokenizer()
    n = 4 if quick else 8
    rows = _preference_rows(n, seed=5, clip=clip_for(quick))
    attn = "chatalign_varlen" if _varlen_available() else "sdpa"
    trainers = {}
    for name, flag in (("padded", False), ("padding_free", True)):
        args = DPOConfig(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, bf16=False, disable_tqdm=True,
                         per_device_train_batch_size=n, max_length=2048, activation_checkpointing=False,
                         padding_free=flag)
        policy, reference = bench_model(attn if flag else "sdpa"), bench_model(attn if flag else "sdpa", seed=1)
        trainer = ChatalignDPOTrainer(model=policy, ref_model=reference, args=args,
                                      train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        trainers[name] = (trainer, trainer.data_collator([trainer.train_dataset[i] for i in range(n)]))

    def step(name):
        trainer, batch = trainers[name]
        trainer.model.zero_grad(set_to_none=True)
        trainer.compute_loss(trainer.model, batch).backward()

    times = alternate({name: (lambda k=name: step(k)) for name in trainers}, repeats=2 if quick else 3)
    real = sum(len(r["chosen"][0]["content"].split()) + len(r["rejected"][0]["content"].split())
               + 2 * len(r["prompt"][0]["content"].split()) for r in rows)
    ratio = statistics.median(times["padded"]) / statistics.median(times["padding_free"])
    flops = (6 + 2) * (non_embedding_params(trainers["padded"][0].model) + HIDDEN * VOCAB) * real  # policy + ref fwd
    mfu = {name: flops / statistics.median(t) / peak for name, t in times.items()}
    return record("DPO step throughput, padding-free vs padded", f"{statistics.median(times['padding_free']):.2f} s",
                  f"{statistics.median(times['padded']):.2f} s", ratio, ">= 1.3x", ratio >= 1.3, attention=attn,
                  pairs=n, mfu_padding_free=mfu["padding_free"], mfu_padded=mfu["padded"],
                  mfu_count="(6 policy + 2 reference) x (non-embedding + LM head) x approx real tokens")


# --------------------------------------------------------------------------------------------------------------------
# Generation: batched vs one prompt at a time


def generation(quick: bool, peak: float) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatalign.generation.local import generate_local
    from chatalign.generation.params import SamplingParams

    model_dir = REPO / "models" / "smollm2-135m-instruct"
    if not (model_dir / "config.json").exists():
        return record("Generation, batched vs one prompt at a time", None, None, None, ">= 8x, greedy outputs identical",
                      None,
                      missing=f"{model_dir} not prepared (make demo prepares it)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    questions = [json.loads(line)["turns"][0] for line in
                 (REPO / "data" / "mt_bench" / "question.jsonl").read_text().splitlines()][:16 if not quick else 4]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    params = SamplingParams(temperature=0.0, max_tokens=16 if quick else 64)
    outputs = {}

    def run(batch_size):
        outputs[batch_size] = generate_local(model, tokenizer, conversations, params, batch_size=batch_size,
                                             progress=False)

    times = alternate({"batched": lambda: run(len(conversations)), "single": lambda: run(1)}, repeats=1)
    ratio = times["single"][0] / times["batched"][0]
    identical = outputs[len(conversations)] == outputs[1]
    return record("Generation, batched vs one prompt at a time", f"{times['batched'][0]:.1f} s",
                  f"{times['single'][0]:.1f} s", ratio, ">= 8x, greedy outputs identical", ratio >= 8 and identical,
                  identical=identical, prompts=len(conversations), model="SmolLM2-135M-Instruct, fp32",
                  max_new_tokens=params.max_tokens)


# --------------------------------------------------------------------------------------------------------------------
# MT-Bench judging: a cached judge vs cold


def mt_bench_cache(quick: bool, peak: float) -> dict:
    import shutil

    from stub_judge import StubJudge

    sys.path.insert(0, str(REPO / "scripts"))
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_mt_bench", REPO / "scripts" / "run_mt_bench.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    work = Path(tempfile.mkdtemp())
    (work / "model_answer").mkdir(parents=True)
    shutil.copy(REPO / "data" / "mt_bench" / "model_answer" / "gpt-3.5-turbo.jsonl", work / "model_answer")
    calls, seconds = [], []
    with StubJudge() as judge:
        for _ in range(2):
            before, start = judge.calls, time.perf_counter()
            script.main(["--judge_only", "true", "--model_id", "gpt-3.5-turbo", "--bench_dir", str(work),
                         "--judge_model", "stub", "--judge_base_url", judge.url, "--judge_parallel", "8",
                         "--result_save_path", str(work / "summary.json")], confirm=lambda _: True)
            seconds.append(time.perf_counter() - start)
            calls.append(judge.calls - before)
    return record("MT-Bench judging, 80 questions, cached judge vs cold", f"{calls[1]} calls, {seconds[1]:.1f} s",
                  f"{calls[0]} calls, {seconds[0]:.1f} s", seconds[0] / seconds[1], "a rerun makes 0 calls",
                  calls[1] == 0 and calls[0] == 160, cold_calls=calls[0], rerun_calls=calls[1])


# --------------------------------------------------------------------------------------------------------------------
# Not built yet: reported as missing, never as a number


def not_built(pair: str, goal: str, why: str):
    def run(quick: bool, peak: float) -> dict:
        return record(pair, None, None, None, goal, None, missing=why)

    return run


PAIRS = {
    "sft": sft_padding_free,
    "dpo": dpo_padding_free,
    "kto": not_built("KTO step throughput, padding-free vs padded", ">= 1.3x",
                     "padding-free KTO is built and exact (tests/train/test_padding_free.py); its pair is not in the "
                     "suite yet"),
    "reference": reference_reuse,
    "memory": loss_memory,
    "generation": generation,
    "data": not_built("Data prep, chatalign vs TRL's default path", ">= 1.5x; >= 1M tok/s; cached >= 50x",
                      "the data-preparation cache is not built yet"),
    "mt_bench": mt_bench_cache,
}
