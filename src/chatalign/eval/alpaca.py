"""AlpacaEval 2.0 through the alpaca_eval package: its annotator configs, prompts, order randomisation, preference
parsing, get_winrate and the length-controlled GLM, with chatalign's judge (any model, cached, estimated) in place of
its OpenAI decoder.

The eval set (805 instructions with gpt4_1106_preview's outputs, the AlpacaEval 2.0 baseline) is CC BY-NC 4.0 and is
not shipped: it comes from the hub dataset tatsu-lab/alpaca_eval or ``eval_set_path``. The LC win rate needs
alpaca_eval's ``df_gamed.csv`` (instruction difficulties and two gamed baselines), which the package downloads from
the hub and does not ship: ``lc_data_path``, else a copy cached after a first download, else LC is reported missing
with the reason, never a number fitted without it.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatalign.eval.judge import EvalJudge, JudgeCall
from chatalign.store import cache_root, content_hash

logger = logging.getLogger(__name__)

DEFAULT_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
HUB_DATASET = "tatsu-lab/alpaca_eval"
HUB_EVAL_SET_FILE = "alpaca_eval_gpt4_baseline.json"
# content_hash of the official eval set's 805 instructions in order: df_gamed.csv's difficulties are by position
OFFICIAL_INSTRUCTIONS = "d02007bfbcc8fcf624c641e8b70d53e82f7d0c061d12cf1b5695357e0d0090ce"
TOOLS_KEYS = ("functions", "function_call", "tools", "tool_choice")


def import_alpaca_eval():
    """alpaca_eval 0.6.6 imports pkg_resources, which setuptools 81 removed: give it the two functions it uses."""
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            from packaging.version import parse

            shim = types.ModuleType("pkg_resources")
            shim.parse_version = parse
            shim.get_distribution = lambda name: types.SimpleNamespace(version=importlib.metadata.version(name))
            sys.modules["pkg_resources"] = shim
    import alpaca_eval

    return alpaca_eval


def cache_dir() -> Path:
    return cache_root() / "alpaca_eval"


# --------------------------------------------------------------------------------------------------------------------
# The eval set and model outputs (alpaca_eval's model_outputs.json)


def load_outputs(path: str | Path, need_output: bool = True) -> list[dict]:
    """A model_outputs.json (a JSON list, or JSONL) of {instruction, output, generator, dataset}; bad rows named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.split("\n")
                                                                       if line.strip()]
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON or JSONL ({err})") from None
    for index, row in enumerate(rows):
        needed = ("instruction", "output") if need_output else ("instruction",)
        for key in needed:
            if not isinstance(row, dict) or not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(f"{path} row {index}, field '{key}': missing or empty")
    return rows


def load_eval_set(path: str | Path | None) -> tuple[list[dict], str]:
    """The eval set (with the baseline's outputs) and where it came from: `path`, or the hub."""
    if path:
        return load_outputs(path), str(path)
    from huggingface_hub import hf_hub_download

    try:
        local = hf_hub_download(HUB_DATASET, HUB_EVAL_SET_FILE, repo_type="dataset")
    except Exception as err:
        raise ConnectionError(f"the AlpacaEval eval set ({HUB_DATASET}/{HUB_EVAL_SET_FILE}, CC BY-NC 4.0, not shipped) "
                              f"could not be downloaded ({type(err).__name__}); give --eval_set_path") from None
    return load_outputs(local), f"hub:{HUB_DATASET}/{HUB_EVAL_SET_FILE}"


def check_same_instructions(model_outputs: Sequence[dict], reference: Sequence[dict], where: str) -> None:
    """Every instruction of the reference has one model output, in the same order (alpaca_eval merges on them)."""
    ours = [r["instruction"] for r in model_outputs]
    theirs = [r["instruction"] for r in reference]
    if ours != theirs:
        missing = [i for i, text in enumerate(theirs) if text not in set(ours)]
        extra = [i for i, text in enumerate(ours) if text not in set(theirs)]
        if missing:
            detail = f"instruction {missing[0]} of the reference ({theirs[missing[0]][:60]!r}) has no output"
        elif extra:
            detail = f"output {extra[0]} ({ours[extra[0]][:60]!r}) answers no instruction of the reference"
        else:
            detail = "the instructions are in another order or repeated"
        raise ValueError(f"{where}: {len(ours)} outputs for {len(theirs)} reference instructions; {detail}")


# --------------------------------------------------------------------------------------------------------------------
# Annotation: alpaca_eval's PairwiseAnnotator, completions from chatalign's judge


def annotator_config(name_or_path: str) -> tuple[dict[str, Any], Path]:
    """An alpaca_eval annotator config (by name, or a configs.yaml path) and its file; function-calling configs are
    refused (the judge client sends no tools)."""
    alpaca_eval = import_alpaca_eval()
    path = Path(name_or_path)
    if not path.exists():
        path = Path(alpaca_eval.constants.EVALUATORS_CONFIG_DIR) / name_or_path
    if path.is_dir():
        path = path / "configs.yaml"
    if not path.is_file():
        raise ValueError(f"unknown AlpacaEval annotator {name_or_path!r} (not a config of alpaca_eval "
                         f"{alpaca_eval.__version__} nor a configs.yaml)")
    configs = alpaca_eval.utils.load_configs(path)
    if len(configs) != 1:
        raise ValueError(f"{path}: {len(configs)} annotators; chatalign runs configs with one")
    (config,) = configs.values()
    kwargs = config.get("completions_kwargs", {})
    if any(key in kwargs for key in TOOLS_KEYS):
        raise ValueError(f"annotator {name_or_path!r} asks the judge for function calls ({', '.join(k for k in TOOLS_KEYS if k in kwargs)}), "
                         f"which chatalign's judge does not send; use {DEFAULT_ANNOTATOR} or alpaca_eval_gpt4")
    return config, path


def judge_call(config: dict[str, Any]) -> JudgeCall:
    """How the config's decoder asks its judge: max_tokens, temperature, and for logprob parsers the first tokens."""
    kwargs = config.get("completions_kwargs", {})
    parser_kwargs = config.get("completion_parser_kwargs", {})
    first = None
    if config.get("fn_completion_parser") == "logprob_parser":
        first = tuple(dict.fromkeys([parser_kwargs["numerator_token"], *parser_kwargs["denominator_tokens"]]))
    return JudgeCall(max_tokens=int(kwargs.get("max_tokens", 2048)), temperature=float(kwargs.get("temperature", 0)),
                     top_logprobs=int(kwargs.get("top_logprobs", 5)) if kwargs.get("logprobs") else 0,
                     first_token=first)


def completions_function(judge: EvalJudge, call: JudgeCall, progress: bool = True):
    """An alpaca_eval `fn_completions` answered by `judge`: the raw completions in the shape its parsers read (for a
    logprob parser, OpenAI's `logprobs.content[0].top_logprobs`)."""
    alpaca_eval = import_alpaca_eval()

    def completions(prompts: Sequence[str], **_decoder_kwargs) -> dict[str, list]:
        conversations = [alpaca_eval.utils.prompt_to_chatml(p) if p.strip().startswith("<|im_start|>")
                         else [{"role": "user", "content": p}] for p in prompts]
        conversations = [[{"role": m["role"], "content": m["content"]} for m in c] for c in conversations]
        judged = judge.judge(conversations, progress, call)
        if any(j is None for j in judged):
            raise RuntimeError("some judge calls failed; rerun the same command to ask for them again (the others "
                               "are cached)")
        raw = []
        for judgment in judged:
            item = {"text": judgment["output"]}
            if call.first_token:
                top = [{"token": t, "logprob": lp} for t, lp in judgment["first_token_logprobs"].items()]
                item["logprobs"] = {"content": [{"token": judgment["output"], "top_logprobs": top}]}
            raw.append(item)
        key = "completions_all" if call.first_token else "completions"
        return {"completions": [j["output"] for j in judged], **({key: raw} if key != "completions" else {}),
                "price_per_example": [0.0] * len(prompts), "time_per_example": [0.0] * len(prompts)}

    return completions


def annotate(model_outputs: list[dict], reference_outputs: list[dict], annotators: str, judge: EvalJudge,
             output_dir: Path, progress: bool = True) -> list[dict]:
    """alpaca_eval's annotations of model vs reference (written to <output_dir>/annotations.json, its layout)."""
    alpaca_eval = import_alpaca_eval()
    import pandas as pd
    from alpaca_eval.annotators import PairwiseAnnotator

    config, config_path = annotator_config(annotators)
    call = judge_call(config)
    fn = completions_function(judge, call, progress)

    class JudgedAnnotator(PairwiseAnnotator):
        """alpaca_eval's annotator with every completion asked of chatalign's judge (its own decoder would call
        OpenAI directly, uncached and unestimated)."""

        def _initialize_annotators(self, **kwargs):
            single = super()._initialize_annotators(**kwargs)
            for annotator in single.values():
                annotator.fn_completions = fn
            return single

    output_dir.mkdir(parents=True, exist_ok=True)
    annotator = JudgedAnnotator(annotators_config=str(config_path), caching_path=None)
    annotated = annotator.annotate_head2head(outputs_1=pd.DataFrame(reference_outputs),
                                             outputs_2=pd.DataFrame(model_outputs), is_ordered=True)
    rows = json.loads(pd.DataFrame(annotated).to_json(orient="records"))
    for row in rows:
        row["annotator"] = Path(annotators).name if Path(annotators).exists() else annotators
    (output_dir / "annotations.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    logger.info("alpaca_eval %s: %d annotations in %s", alpaca_eval.__version__, len(rows), output_dir)
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Metrics: alpaca_eval's own


def metrics(annotations: Sequence[dict], model_outputs: Sequence[dict] | None = None,
            lc_data_path: str | None = None) -> dict[str, Any]:
    """get_winrate (win rate, standard error, wins, draws, discrete win rate), the average output length as the
    leaderboard gives it, and the LC win rate where it can be computed (else None and `lc_unavailable`)."""
    import_alpaca_eval()
    import pandas as pd
    from alpaca_eval.metrics import get_winrate

    frame = pd.DataFrame(list(annotations))
    out = dict(get_winrate(frame))
    outputs = [r["output"] for r in model_outputs] if model_outputs else frame["output_2"].tolist()
    out["avg_length"] = int(pd.Series(outputs).str.len().mean())
    lc, reason = length_controlled(frame, lc_data_path)
    out.update(lc)
    if reason:
        out["lc_unavailable"] = reason
    return {key: (value.item() if hasattr(value, "item") else value) for key, value in out.items()}


def length_controlled(frame, lc_data_path: str | None) -> tuple[dict[str, float | None], str | None]:
    """alpaca_eval's length-controlled win rate, or (None, why) where it cannot be computed correctly."""
    missing = {"length_controlled_winrate": None, "lc_standard_error": None}
    if content_hash(frame["instruction"].tolist()) != OFFICIAL_INSTRUCTIONS:
        return missing, ("LC needs annotations of all 805 instructions of the official eval set in its order "
                         f"(df_gamed.csv is by position); these are {len(frame)}")
    data, reason = _df_gamed(lc_data_path)
    if data is None:
        return missing, reason
    from alpaca_eval.metrics import glm_winrate

    original = glm_winrate.hf_hub_download
    glm_winrate.hf_hub_download = lambda *args, **kwargs: str(data)  # the GLM reads df_gamed.csv through this
    try:
        result = glm_winrate.get_length_controlled_winrate(frame.copy(), save_weights_dir=None,
                                                           is_add_glm_preference_inplace=False)
    finally:
        glm_winrate.hf_hub_download = original
    return {key: float(result[key]) for key in missing}, None


def _df_gamed(lc_data_path: str | None) -> tuple[Path | None, str | None]:
    if lc_data_path:
        path = Path(lc_data_path)
        return (path, None) if path.is_file() else (None, f"--lc_data_path {path}: no such file")
    cached = cache_dir() / "df_gamed.csv"
    if cached.is_file():
        return cached, None
    from huggingface_hub import hf_hub_download

    try:
        downloaded = hf_hub_download(HUB_DATASET, "df_gamed.csv", repo_type="dataset")
    except Exception as err:
        return None, (f"df_gamed.csv (hub dataset {HUB_DATASET}; alpaca_eval does not ship it) could not be "
                      f"downloaded ({type(err).__name__}); give --lc_data_path")
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(downloaded, cached)
    return cached, None
