"""The benchmark pairs: each runs two code paths in one process (alternating, so drift hits both) and returns one
record {pair, a, b, ratio, goal, met, detail}. Numbers that could not be measured are None with the reason.
`PAIRS` names them all; the workload is common.py's, the preference pairs live in preference_pairs.py.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    HIDDEN,
    REPO,
    VOCAB,
    alternate,
    bench_model,
    clip_for,
    lengths,
    non_embedding_params,
    record,
    varlen_available,
)
from preference_pairs import dpo_padding_free, fused_head_positions, kto_padding_free, reference_reuse

# --------------------------------------------------------------------------------------------------------------------
# SFT: padding-free vs padded


def sft_padding_free(quick: bool, peak: float) -> dict:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = lengths(8, seed=1, clip=clip_for(quick))
    rng = np.random.default_rng(2)
    examples = [{"input_ids": rng.integers(1, VOCAB, n).tolist()} for n in rows]
    attn = "chatalign_varlen" if varlen_available() else "sdpa"
    models = {"padded": bench_model("sdpa"), "padding_free": bench_model(attn)}
    batches = {"padded": DataCollatorForLanguageModeling(pad_token_id=0)(examples),
               "padding_free": DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)}

    def step(name):
        model, batch = models[name], batches[name]
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()

    times = alternate({name: (lambda n=name: step(n)) for name in models}, repeats=1 if quick else 3)
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
                  mfu_count="6 x (non-embedding + LM head) x real tokens; both paths project every position to full "
                  "logits", lengths=rows)


# --------------------------------------------------------------------------------------------------------------------
# Loss memory: the trainers' LM head (TRL's fused head, tiles fitted by chatalign) vs full logits vs TRL's own tiles,
# each in a fresh process. The peak is the step's: the kernel's high-water mark is reset (/proc/self/clear_refs) after
# a warm-up step, so loading and imports, the same for every mode, are not in it (ru_maxrss would keep them).


MEMORY_CHILD = """
import sys, torch
sys.path.insert(0, {benchmarks!r})
from common import bench_model
torch.set_num_threads(2)
model = bench_model()
tokens = torch.randint(1, 32000, ({rows}, {length}))
labels = tokens.clone()
if {mode!r} != "full":
    from trl.trainer.utils import add_fused_lm_head
    if {mode!r} == "chunked":
        from chatalign.train.chunked_logps import fit_fused_head_tiles
        fit_fused_head_tiles("cpu")
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # DPO's outputs
def step():
    if {mode!r} != "full":
        loss = model(input_ids=tokens, labels=labels, fused_lm_head=True).loss
    else:
        logits = model(input_ids=tokens).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 32000), labels[:, 1:].reshape(-1))
    loss.backward()
    return float(loss)
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
step()
model.zero_grad(set_to_none=True)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS to the current RSS
before = status("VmRSS")
loss = step()
print(status("VmHWM") - before, loss)
"""


def loss_memory(quick: bool, peak: float) -> dict:
    if not Path("/proc/self/clear_refs").exists():
        return record("Loss peak memory, chunked vs full logits", None, None, None, "<= 0.5", None,
                      missing="needs Linux's /proc/self/clear_refs to measure a step's own peak")
    rss, (rows, length) = {}, ((1, 512) if quick else (4, 1024))
    for mode in ("full", "chunked", "trl_default"):
        code = MEMORY_CHILD.format(benchmarks=str(Path(__file__).parent), mode=mode, rows=rows, length=length)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode != 0:  # one child's failure is this pair's missing number, not the suite's end
            return record("Loss peak memory, chunked vs full logits", None, None, None, "<= 0.5", None,
                          missing=f"the {mode} child failed: {out.stderr.strip().splitlines()[-1:]}")
        rss[mode] = int(out.stdout.split()[0]) / 1024  # KiB -> MiB
    ratio = rss["chunked"] / rss["full"]
    return record("Loss peak memory, chunked vs full logits (the step's peak RSS above its start)",
                  f"{rss['chunked']:,.0f} MiB", f"{rss['full']:,.0f} MiB", ratio, "<= 0.5", ratio <= 0.5,
                  batch=f"{rows} x {length} tokens, vocab 32k, forward + backward, the second step in a fresh process",
                  chunked="TRL's fused LM head with chatalign.train.chunked_logps' tiles (what the trainers run)",
                  trl_default_tiles_mib=rss["trl_default"], trl_default_vs_full=rss["trl_default"] / rss["full"])


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
    # What batching can give at most here: n decode steps of one sequence vs one step of n (the same cache length).
    step_one, step_batch = decode_step_seconds(model, 1), decode_step_seconds(model, len(conversations))
    return record("Generation, batched vs one prompt at a time", f"{times['batched'][0]:.1f} s",
                  f"{times['single'][0]:.1f} s", ratio, ">= 8x, greedy outputs identical", ratio >= 8 and identical,
                  identical=identical, prompts=len(conversations), model="SmolLM2-135M-Instruct, fp32",
                  max_new_tokens=params.max_tokens, decode_step_1_s=step_one, decode_step_batch_s=step_batch,
                  decode_ceiling=len(conversations) * step_one / step_batch)


def decode_step_seconds(model, batch: int, context: int = 128, steps: int = 8) -> float:
    """Seconds of one greedy decode step for `batch` sequences with `context` tokens already in the KV cache."""
    import torch

    ids = torch.randint(0, model.config.vocab_size, (batch, context))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        start = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
        return (time.perf_counter() - start) / steps


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
# Data preparation: chatalign's SFT rendering (batched, cached) vs TRL's default path on the same rows


def trl_sft_preparation(dataset, tokenizer, max_length: int):
    """TRL 1.16's own SFT preparation (SFTTrainer._prepare_dataset, as SFTTrainer runs it with
    assistant_only_loss), called on a trainer shell holding just the attributes it reads."""
    from trl import SFTConfig, SFTTrainer

    shell = SFTTrainer.__new__(SFTTrainer)
    shell.args = SFTConfig(output_dir=tempfile.mkdtemp(), assistant_only_loss=True, max_length=max_length,
                           use_cpu=True, report_to=[])
    shell._tokenizer, shell.chat_template, shell.completion_only_loss = tokenizer, None, False
    shell._is_vision_dataset, shell._signature_columns = False, None
    return shell._prepare_dataset(dataset, tokenizer, shell.args, False, None, "train")


def data_preparation(quick: bool, peak: float) -> dict:
    from datasets import Dataset, disable_progress_bars
    from transformers import AutoTokenizer

    from chatalign.data.templates import set_chat_template
    from chatalign.train.sft import tokenize_sft

    pair, goal = "Data prep, chatalign vs TRL's default path", ">= 1.5x; >= 1M tok/s; cached >= 50x"
    model_dir = REPO / "models" / "smollm2-135m-instruct"
    if not (model_dir / "tokenizer.json").exists():
        return record(pair, None, None, None, goal, None, missing=f"{model_dir} not prepared (make demo prepares it)")
    disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    set_chat_template(tokenizer, "chatml")
    demo = json.loads((REPO / "data" / "llama_factory_demo" / "alpaca_en_demo.json").read_text())
    rows = [{"messages": [{"role": "user", "content": f"{r['instruction']}\n{r['input']}".strip()},
                          {"role": "assistant", "content": r["output"]}]} for r in demo] * (1 if quick else 8)
    dataset, cache = Dataset.from_list(rows), tempfile.mkdtemp()
    out = {}

    def ours():
        shutil.rmtree(cache, ignore_errors=True)  # cold: nothing cached
        out["chatalign"] = tokenize_sft(dataset, tokenizer, 4096, cache_dir=cache)[0]

    def trl():
        out["trl"] = trl_sft_preparation(dataset, tokenizer, 4096)

    times = alternate({"chatalign": ours, "trl": trl}, repeats=1 if quick else 2)
    warm = []
    for _ in range(3):  # warm: the cache of the last cold run
        start = time.perf_counter()
        tokenize_sft(dataset, tokenizer, 4096, cache_dir=cache)
        warm.append(time.perf_counter() - start)
    cached = statistics.median(warm)
    identical = (out["chatalign"]["input_ids"] == out["trl"]["input_ids"]
                 and out["chatalign"]["labels"] == out["trl"]["labels"])
    tokens = sum(map(len, out["chatalign"]["input_ids"]))
    a, b = statistics.median(times["chatalign"]), statistics.median(times["trl"])
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    start = time.perf_counter()
    tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    ceiling = tokens / (time.perf_counter() - start)  # the Rust encoder alone, no template, no mask
    ratio, cached_ratio = b / a, a / cached
    return record(pair, f"{tokens / a:,.0f} tok/s", f"{tokens / b:,.0f} tok/s", ratio, goal,
                  ratio >= 1.5 and tokens / a >= 1e6 and cached_ratio >= 50 and identical,
                  identical_ids_and_labels=identical, cached_vs_cold=cached_ratio, cached_s=cached, tokens=tokens,
                  rows=len(rows), tokenizer="SmolLM2-135M-Instruct (byte-level BPE, 49k) with chatml",
                  tokenizer_alone_tok_s=ceiling)


# --------------------------------------------------------------------------------------------------------------------
# Not built yet: reported as missing, never as a number


def not_built(pair: str, goal: str, why: str):
    def run(quick: bool, peak: float) -> dict:
        return record(pair, None, None, None, goal, None, missing=why)

    return run


PAIRS = {
    "sft": sft_padding_free,
    "dpo": dpo_padding_free,
    "kto": kto_padding_free,
    "reference": reference_reuse,
    "memory": loss_memory,
    "fused_head": fused_head_positions,
    "generation": generation,
    "data": data_preparation,
    "mt_bench": mt_bench_cache,
}
