"""Judge specs (``reward_model:<path>``, ``pairrm:<path>``, ``llm:<target>``) to judges, and their recipe keys."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatalign.generation.client import client_from_args, is_loopback
from chatalign.generation.params import GenerationArguments
from chatalign.judges.models import (
    LLMJudge,
    PairRMJudge,
    RewardModelJudge,
    client_completer,
    local_completer,
)

logger = logging.getLogger(__name__)

JUDGE_KINDS = ("reward_model", "pairrm", "llm")


_KIND_ALIASES = {"rm": "reward_model", "reward_model": "reward_model", "pairrm": "pairrm", "pair_rm": "pairrm",
                 "llm": "llm"}
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"


@dataclass
class JudgeArguments:
    """Recipe/CLI keys tuning a judge (the judge itself is `--judge` / `--judge_model`)."""

    judge_base_url: str | None = field(
        default=None, metadata={"help": f"Endpoint for `llm:<model>` judges (default {DEFAULT_OPENAI_URL})."})
    judge_api_key_env: str = field(default="OPENAI_API_KEY",
                                   metadata={"help": "Environment variable holding the judge endpoint's key."})
    judge_parallel: int = field(default=8, metadata={"help": "LLM judge requests in flight at once."})
    judge_batch_size: int = field(default=8, metadata={"help": "Texts per forward pass of a local judge model."})
    judge_max_tokens: int = field(default=1024, metadata={"help": "Tokens an LLM judge may write per verdict."})
    judge_max_length: int = field(default=2048,
                                  metadata={"help": "Token limit of a reward model / pair classifier input (the "
                                                    "start is cut)."})
    judge_both_orders: bool = field(default=True, metadata={"help": "Pairwise judges compare every pair in both "
                                                                    "orders, cancelling position bias."})


@dataclass(frozen=True)
class JudgeSpec:
    kind: str
    target: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_judge_spec(spec: str, default_kind: str | None = None) -> JudgeSpec:
    """'kind:target' (kinds: reward_model|rm, pairrm, llm); without a known kind prefix, `default_kind` if given."""
    if not spec or not str(spec).strip():
        raise ValueError(f"judge spec is empty; expected one of {', '.join(k + ':<...>' for k in JUDGE_KINDS)}")
    prefix, sep, rest = str(spec).partition(":")
    if sep and prefix.lower() in _KIND_ALIASES and rest:
        return JudgeSpec(_KIND_ALIASES[prefix.lower()], rest)
    if default_kind is not None:
        return JudgeSpec(default_kind, str(spec))
    raise ValueError(f"judge spec '{spec}': expected reward_model:<path>, pairrm:<path> or llm:<model, url or path>")


def resolve_llm_target(target: str, base_url: str | None = None) -> tuple[str, str | None, str | None]:
    """("local", path, None) or ("http", url, model) for an llm: judge target (see the module docstring)."""
    if Path(target).expanduser().is_dir():
        return "local", str(Path(target).expanduser().resolve()), None
    if target.startswith(("http://", "https://")):
        return "http", target, None
    model, at, url = target.rpartition("@")
    if at and url.startswith(("http://", "https://")) and model:
        return "http", url, model
    return "http", base_url or DEFAULT_OPENAI_URL, target


def load_judge(spec: str | JudgeSpec, args: JudgeArguments | None = None, gen_args=None,
               default_kind: str | None = None):
    """A judge for a spec. Models are loaded on the first uncached judgment, so a fully cached rerun loads nothing."""
    args = args or JudgeArguments()
    spec = spec if isinstance(spec, JudgeSpec) else parse_judge_spec(spec, default_kind)
    if spec.kind in ("reward_model", "pairrm"):
        if not Path(spec.target).expanduser().exists():
            raise FileNotFoundError(f"judge '{spec}': no such checkpoint folder '{spec.target}'")
        cls = RewardModelJudge if spec.kind == "reward_model" else PairRMJudge
        return cls(spec.target, batch_size=args.judge_batch_size, max_length=args.judge_max_length)
    where, location, model = resolve_llm_target(spec.target, args.judge_base_url)
    if where == "local":
        return LLMJudge(local_completer(location, args.judge_max_tokens, args.judge_batch_size), location,
                        max_tokens=args.judge_max_tokens, chunk_size=args.judge_batch_size * 4)
    # The name (the cache identity) is the target as given; the client, and a request asking a bare URL which model
    # it serves, wait for the first uncached judgment, so a fully cached rerun needs no server.
    target = f"{model}@{location}" if model else location
    return LLMJudge(_lazy_client_completer(location, model, args, gen_args), target,
                    max_tokens=args.judge_max_tokens, chunk_size=max(args.judge_parallel, 1) * 4)


def _lazy_client_completer(url: str, model: str | None, args: JudgeArguments, gen_args=None):
    state: dict[str, Any] = {}

    def complete_many(conversations):
        if "complete" not in state:
            served = model or served_model(url, os.environ.get(args.judge_api_key_env))
            state["complete"] = client_completer(_chat_client(url, served, args, gen_args), args.judge_max_tokens)
        return state["complete"](conversations)

    return complete_many


def served_model(url: str, api_key: str | None = None, timeout: float = 30.0) -> str:
    """The first model an OpenAI-compatible endpoint lists at GET /models ("default" when it lists none)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        # A proxy from the environment must not swallow requests to a server on this machine.
        response = httpx.get(f"{url.rstrip('/')}/models", headers=headers, timeout=timeout,
                             trust_env=not is_loopback(url))
        response.raise_for_status()
        models = [m.get("id") for m in response.json().get("data", []) if m.get("id")]
    except (httpx.HTTPError, ValueError) as err:
        raise ConnectionError(f"judge endpoint {url}: could not list its models ({err}); give the model as "
                              f"llm:<model>@{url}") from None
    return models[0] if models else "default"


def _chat_client(url: str, model: str, args: JudgeArguments, gen_args=None):
    """The generation layer's ChatClient for the judge's endpoint (its own URL, key and parallelism)."""

    base = gen_args if gen_args is not None else GenerationArguments()
    judge_gen_args = dataclasses.replace(base, backend="openai", base_url=url, server_ports=None,
                                         served_model_name=model, api_key_env=args.judge_api_key_env,
                                         gen_parallel=args.judge_parallel)
    if not os.environ.get(args.judge_api_key_env) and url.startswith(DEFAULT_OPENAI_URL):
        logger.warning("judge endpoint %s: environment variable %s is not set", url, args.judge_api_key_env)
    return client_from_args(judge_gen_args, model)
