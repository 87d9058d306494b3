"""Online RL from rewards on TRL's maintained trainers: the recipe keys, the algorithm and generation backend, checks
before anything loads, and the thin trainer subclasses (sampled completions to a file, a reference with the policy's
embedding rows).

`rl_algorithm` picks the trainer: grpo (GRPOTrainer, group-normalised advantages) or rloo (RLOOTrainer, leave-one-out
baseline), both TRL 1.16's own, unchanged. ppo is not supported: TRL 1.16 ships no PPO trainer, and the ones older
TRLs shipped took a value model and a reward model, never reward functions; asking for it is an error before anything
loads. TRL logs per reward `rewards/<name>/mean` and
`/std`, the weighted `reward` and `reward_std`, `kl` (with beta > 0, against the frozen reference) and
`completions/mean_length`; chatalign adds a few sampled completions per logging step to
<output_dir>/sampled_completions.jsonl.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trl import GRPOTrainer, RLOOTrainer

from chatalign.configs import ConfigError, load_recipe_file, read_run_args
from chatalign.train.rewards import RewardSpec, completion_text, parse_reward_specs
from chatalign.train.run import RunArguments

logger = logging.getLogger(__name__)

RL_ALGORITHMS = ("grpo", "rloo")
SAMPLED_COMPLETIONS_FILE = "sampled_completions.jsonl"
SUPERSEDED_COMPLETIONS_FILE = "sampled_completions.superseded.jsonl"  # rows of steps a resumed run trains again
# Columns of the prompt schema (required and optional): they reach the reward functions without reward_columns.
PROMPT_COLUMNS = ("prompt", "prompt_id", "reference", "source")
# Keys that make a checkpoint another run's, beyond chatalign.train.run.RUN_IDENTITY.
RL_IDENTITY = ("rl_algorithm", "rewards", "reward_weights")


@dataclass
class RLScriptArguments(RunArguments):
    """Recipe keys of run_rl beyond TRL's GRPOConfig / RLOOConfig (which hold num_generations, beta, temperature,
    max_completion_length, use_vllm, vllm_mode, reward_weights, log_completions, ...)."""

    rl_algorithm: Literal["grpo", "rloo"] = field(
        default="grpo",
        metadata={"help": "grpo: TRL's GRPOTrainer; rloo: TRL's RLOOTrainer. (ppo is unsupported: TRL 1.16 ships no "
                          "PPO trainer; asking for it is an error before anything loads.)"},
    )
    rewards: list[Any] | None = field(
        default=None,
        metadata={"help": "The rewards, combined with weights: entries {kind, spec, weight, name} or '<kind>:<spec>' "
                          "strings; kinds function (module:function), reward_model (a sequence-classification "
                          "checkpoint), judge (a judge spec, default llm:<model>@<url>, rating 1-10, cached)."},
    )
    reward_columns: list[str] | None = field(
        default=None,
        metadata={"help": "Raw columns of the prompt sources passed through to every reward function by name (e.g. "
                          "[answer]); every source must have them (a missing one is an error naming the source). "
                          "prompt, reference, prompt_id and source always reach the rewards."},
    )
    generation_backend: Literal["auto", "vllm", "transformers"] = field(
        default="auto",
        metadata={"help": "Generation during training: vllm (TRL's use_vllm, vllm_mode colocate or server), "
                          "transformers (in process), auto: vllm where installed with a CUDA GPU, else transformers."},
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Drop (and count) prompts longer than this many templated tokens; TRL 1.16 never cuts "
                          "prompts. None: every prompt is kept."},
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "A system message put first in every prompt that has none (e.g. asking for the final "
                          "answer in \\boxed{}, where the correctness reward looks first)."},
    )
    sampled_completions: int = field(
        default=4,
        metadata={"help": f"Completions (with prompt and rewards) written per logging step to "
                          f"<output_dir>/{SAMPLED_COMPLETIONS_FILE} and the log; 0: none."},
    )
    judge_cache_file: str | None = field(
        default=None,
        metadata={"help": "JSONL cache of LLM-judge rewards (default <output_dir>/reward_judgments.jsonl): a "
                          "completion judged once, in this run or any run sharing the file, is not paid again."},
    )

    def __post_init__(self):
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be a positive token count, got {self.max_prompt_length}")
        if self.sampled_completions < 0:
            raise ValueError(f"sampled_completions must be 0 or more, got {self.sampled_completions}")
        # The prompt schema keeps these itself; named again, the mixer would demand them in the raw source too (the
        # ToRA rows have gt, not reference).
        given = sorted(set(self.reward_columns or []) & set(PROMPT_COLUMNS))
        if given:
            raise ValueError(f"reward_columns: {', '.join(given)} reach the rewards already (the prompt schema's "
                             f"{', '.join(PROMPT_COLUMNS)}); name only other columns")


# --------------------------------------------------------------------------------------------------------------------
# The algorithm, before the recipe is parsed (it decides the config class)


def requested_algorithm(argv: list[str]) -> str:
    """rl_algorithm from `--rl_algorithm X` / `--rl_algorithm=X`, else the last recipe file (or --configs block)
    that sets it, else grpo."""
    for index, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if key.replace("-", "_") == "__rl_algorithm":
            return (value if eq else argv[index + 1] if index + 1 < len(argv) else "").strip()
    blocks = argv[argv.index("--configs") + 1:] if "--configs" in argv else []
    blocks = blocks[:next((i for i, b in enumerate(blocks) if b.startswith("--")), len(blocks))]
    algorithm = "grpo"
    for path in [a for a in argv if a.endswith((".yaml", ".yml")) and not a.startswith("--")]:
        content = load_recipe_file(Path(path))
        layers = [content[b] for b in blocks if isinstance(content.get(b), dict)] if blocks else [content]
        for layer in layers:
            algorithm = str(layer.get("rl_algorithm", algorithm))
    return algorithm


def trainer_classes(algorithm: str):
    """(config class, chatalign trainer class) for rl_algorithm; ppo, or any other name, a clear error."""
    import trl

    if algorithm == "grpo":
        return trl.GRPOConfig, ChatalignGRPOTrainer
    if algorithm == "rloo":
        return trl.RLOOConfig, ChatalignRLOOTrainer
    if algorithm == "ppo":
        # Older TRLs' PPOTrainer took a value model and one reward model, never TRL reward functions and weights;
        # TRL 1.16 ships none at all (neither trl nor trl.experimental), so nothing here could drive it.
        raise ConfigError(f"rl_algorithm ppo is experimental and unsupported with the installed TRL "
                          f"{trl.__version__} (it ships no PPO trainer that takes reward functions); use rl_algorithm "
                          "grpo or rloo")
    raise ConfigError(f"rl_algorithm '{algorithm}': one of {', '.join(RL_ALGORITHMS)}")


# --------------------------------------------------------------------------------------------------------------------
# Checks before loading


def vllm_usable() -> tuple[bool, str]:
    """Whether TRL can generate with vLLM here, and why not."""
    if importlib.util.find_spec("vllm") is None:
        return False, "vllm is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    return True, "vllm installed with a CUDA GPU"


def resolve_generation_backend(script_args: RLScriptArguments, training_args) -> str:
    """Sets training_args.use_vllm from generation_backend (auto: vLLM where usable); returns the backend's name.
    use_cpu rules vLLM out even with a GPU: TRL's vLLM engine would put generation on the GPU of a CPU run."""
    usable, why = (False, "use_cpu is set") if training_args.use_cpu else vllm_usable()
    backend = script_args.generation_backend
    if backend == "transformers" and training_args.use_vllm:
        raise ConfigError("generation_backend transformers contradicts use_vllm: true; drop one of them")
    wants_vllm = backend == "vllm" or training_args.use_vllm
    if wants_vllm and not usable:
        raise ConfigError(f"generation with vLLM asked (generation_backend {backend}, use_vllm "
                          f"{training_args.use_vllm}) but {why}; use generation_backend transformers or auto")
    training_args.use_vllm = wants_vllm or (backend == "auto" and usable)
    if training_args.use_vllm:
        return f"vllm ({training_args.vllm_mode})"
    return "transformers (in process)" + ("" if backend != "auto" else f"; vLLM not used: {why}")


def check_vllm_vocabulary(tokenizer, model_args, trust_remote_code: bool = False) -> None:
    """With vLLM generating, a tokenizer that outgrew the checkpoint's vocabulary (a pad or special token added, for
    which load_model grows the embeddings) is an error before the model loads: vLLM loads the original checkpoint, so
    the grown embedding rows could not be synced into it."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                        trust_remote_code=trust_remote_code)
    vocab_size = getattr(config.get_text_config(), "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        added = [token for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
                 if index >= vocab_size]
        raise ConfigError(f"generation with vLLM: the tokenizer has {len(tokenizer)} tokens but checkpoint "
                          f"'{model_args.model_name_or_path}' has vocab_size {vocab_size} (tokens beyond it: "
                          f"{', '.join(added[:5])}); vLLM loads the original checkpoint, whose embeddings "
                          "cannot hold the new rows. Use a checkpoint whose tokenizer has a pad token and the "
                          "special tokens, or generation_backend transformers")


def check_rl_run(script_args: RLScriptArguments, training_args, data_args) -> list[RewardSpec]:
    """Recipe problems of an RL run, found before any model or data loads; returns the rewards, whose weights then
    go to TRL's reward_weights."""
    specs = parse_reward_specs(script_args.rewards or [], training_args.reward_weights)
    if getattr(data_args, "resample_each_epoch", False):
        raise ConfigError("resample_each_epoch is not supported by run_rl: TRL's samplers repeat a fixed dataset")
    if training_args.beta == 0.0:
        logger.warning("beta is 0: no reference model is loaded and no KL is logged (set beta > 0 to have both)")
    return specs


def check_same_rl_run(output_dir: str | Path, configs, checkpoint: str | None) -> None:
    """A checkpoint is resumed only by a run with the same algorithm and rewards (RUN_IDENTITY covers the rest)."""
    if checkpoint is None:
        return
    from chatalign.configs import resolved_args

    stored = (read_run_args(output_dir) or {}).get("args") or {}
    now = resolved_args(configs)
    diffs = [f"{key}: {stored[key]!r} -> {now.get(key)!r}" for key in RL_IDENTITY
             if key in stored and stored[key] != now.get(key)]
    if diffs:
        raise ConfigError(f"output_dir {output_dir} holds checkpoints of another RL run ({'; '.join(diffs)}): use "
                          "another output_dir, or overwrite_output_dir: true without resume_from_checkpoint")


def judge_cache_files(cache_file: str | Path, world_size: int = 1, process_index: int = 0) -> tuple[Path, list[Path]]:
    """(the file this process appends judgments to, the files it reads them from). With several processes each writes
    `<stem>.rank<i>.jsonl` (one writer per file) and reads the others'; the files read are exactly `cache_file` and
    its `<stem>.rank<i>.jsonl` siblings, never another cache that merely shares the prefix (cache_other_run.jsonl)."""
    base = Path(cache_file)
    own = base.with_suffix(f".rank{process_index}.jsonl") if world_size > 1 else base
    sibling = re.compile(re.escape(base.stem) + r"\.rank\d+\.jsonl")
    ranks = [p for p in base.parent.glob(f"{glob.escape(base.stem)}.rank*.jsonl") if sibling.fullmatch(p.name)]
    return own, sorted({base, own, *ranks})


def prune_sampled_completions(output_dir: str | Path, checkpoint: str | None) -> int:
    """Moves the rows of <output_dir>/sampled_completions.jsonl logged after `checkpoint`'s step (after step 0 for a
    fresh start) to sampled_completions.superseded.jsonl: the run retrains those steps and appends them again, so
    each step appears once, in order, and nothing logged is lost. Returns how many rows were moved."""
    path = Path(output_dir) / SAMPLED_COMPLETIONS_FILE
    if not path.is_file():
        return 0
    step = checkpoint_step(checkpoint) if checkpoint is not None else 0
    lines = path.read_text().splitlines(keepends=True)
    kept, moved = [], []
    for line in lines:
        logged = _logged_step(line)
        if logged is not None and logged <= step:
            kept.append(line)
        else:
            moved.append(line if line.endswith("\n") else line + "\n")
    if moved:
        superseded = path.with_name(SUPERSEDED_COMPLETIONS_FILE)
        with superseded.open("a", encoding="utf-8") as handle:
            handle.writelines(moved)
        path.write_text("".join(kept))
        logger.warning("%s: %d rows logged after step %d, which this run trains (again), moved to %s", path,
                       len(moved), step, superseded.name)
    return len(moved)


def _logged_step(line: str) -> int | None:
    """A sampled-completions row's step; None for a line cut off by a crash mid-write (dropped with the rest)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def checkpoint_step(checkpoint: str | Path) -> int:
    """The global step training resumes after: the checkpoint's trainer_state.json, else 0 (the Trainer, finding no
    state there, starts counting from 0 too)."""
    state = Path(checkpoint) / "trainer_state.json"
    return int(json.loads(state.read_text())["global_step"]) if state.is_file() else 0


def with_system_prompt(dataset, system_prompt: str | None):
    """Every prompt without a system message (or with an empty one, as auto_insert_empty_system_msg gives) gets
    `system_prompt` as its first message (None: unchanged)."""
    if not system_prompt:
        return dataset
    system = {"role": "system", "content": system_prompt}

    def add(batch):
        return {"prompt": [([system, *p[1:]] if not p[0]["content"] else p) if p and p[0]["role"] == "system"
                           else [system, *p] for p in batch["prompt"]]}

    return dataset.map(add, batched=True, desc="system prompt")


def drop_long_prompts(dataset, tokenizer, max_prompt_length: int | None, split: str = "train"):
    """(dataset, counts): prompts whose templated tokens exceed max_prompt_length dropped, as TRL never cuts them."""
    if max_prompt_length is None:
        return dataset, {"kept": len(dataset)}
    lengths = [len(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)
                   ["input_ids"]) for p in dataset["prompt"]]
    keep = [i for i, n in enumerate(lengths) if n <= max_prompt_length]
    counts = {"kept": len(keep), "dropped: prompt over max_prompt_length": len(dataset) - len(keep)}
    if not keep:
        raise ValueError(f"no {split} prompt fits max_prompt_length={max_prompt_length} (shortest: {min(lengths)} "
                         "tokens)")
    return (dataset if len(keep) == len(dataset) else dataset.select(keep)), counts


# --------------------------------------------------------------------------------------------------------------------
# The trainers: TRL's, plus a file of sampled completions and a reference of the policy's vocabulary size


class RLTrainerMixin:
    """Before TRL's trainer in the MRO. `sampled_completions` rows of the latest generation batch (prompt, completion,
    each reward, advantage) go to <output_dir>/sampled_completions.jsonl at every logging step, on the main process.
    TRL loads the reference from the policy's path: where load_model grew the policy's embeddings for a new pad token,
    the reference is grown to match (its rows for the new token are never attended to)."""

    def __init__(self, *args, sampled_completions: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        self.sampled_completions = sampled_completions
        self._last_sampled_step = -1
        ref = getattr(self, "ref_model", None)
        if ref is not None:
            rows = self.accelerator.unwrap_model(self.model).get_input_embeddings().weight.shape[0]
            unwrapped = self.accelerator.unwrap_model(ref)
            if unwrapped.get_input_embeddings().weight.shape[0] != rows:
                # TRL has already wrapped the reference: DeepSpeed partitions (ZeRO-3) and FSDP shards or flattens its
                # parameters, so swapping its embedding module now would leave the wrapper holding the old ones.
                engine = "DeepSpeed" if self.is_deepspeed_enabled else "FSDP" if self.is_fsdp_enabled else None
                if engine is not None:
                    raise ValueError(f"the policy's embeddings were resized for a pad token; TRL's {engine} reference "
                                     "cannot be resized: give the checkpoint a pad token or use PEFT")
                unwrapped.resize_token_embeddings(rows)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        step = self.state.global_step
        if (self.sampled_completions and self.accelerator.is_main_process and step != self._last_sampled_step
                and any(key in logs for key in ("loss", "reward", "eval_reward"))):
            self._last_sampled_step = step
            self.write_sampled_completions(step)

    def write_sampled_completions(self, step: int) -> list[dict]:
        prompts, completions = list(self._logs["prompt"]), list(self._logs["completion"])
        count = min(self.sampled_completions, len(prompts))
        rewards = {name: list(values) for name, values in self._logs["rewards"].items()}
        advantages = list(self._logs["advantages"])
        rows = []
        for index in range(count):
            rows.append({
                "step": step,
                "prompt": prompts[index] if isinstance(prompts[index], str) else list(prompts[index]),
                "completion": completion_text(completions[index]),
                "rewards": {name: _number(values[index]) for name, values in rewards.items() if index < len(values)},
                "advantage": _number(advantages[index]) if index < len(advantages) else None,
            })
        path = Path(self.args.output_dir) / SAMPLED_COMPLETIONS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        for row in rows[:2]:
            logger.info("step %d sample: %r -> rewards %s", step, row["completion"][:200], row["rewards"])
        return rows


def _number(value) -> float | None:
    value = float(value)
    return None if value != value else value  # NaN: the reward gave none


class ChatalignGRPOTrainer(RLTrainerMixin, GRPOTrainer):
    """TRL's GRPOTrainer with chatalign's sampled completions and reference vocabulary (RLTrainerMixin)."""


class ChatalignRLOOTrainer(RLTrainerMixin, RLOOTrainer):
    """TRL's RLOOTrainer with chatalign's sampled completions and reference vocabulary (RLTrainerMixin)."""
