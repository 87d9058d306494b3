"""The judge of the judged benchmarks: any OpenAI-compatible chat model; every call cached, counted, and estimated and
confirmed before it is paid for.

A judge is an OpenAI model by name (the OpenAI API, its key from ``OPENAI_API_KEY``), a model on any OpenAI-compatible
endpoint (``judge_base_url``), or a local checkpoint folder that chatalign serves for the run (vLLM, SGLang or
``transformers serve``, chatalign.generation.servers). Requests go through the generation layer's ChatClient
(``judge_parallel`` in flight, retries with backoff).

Every judgment is appended to a cache file the moment it arrives, under ``content_hash({judge, messages, sampling})``
(chatalign.store): a killed run, rerun, asks only for what is missing, and an unchanged rerun asks for nothing. Before
the first call to an endpoint that is not on this machine, the number of calls, the estimated prompt and completion
tokens and the estimated cost at list price are printed, and the run waits for a yes unless ``y``.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from chatalign.generation.client import ChatClient, ChatRequestError, client_from_args, is_loopback
from chatalign.generation.params import GenerationArguments, SamplingParams
from chatalign.store import ResumableJsonl, content_hash, judgment_key

logger = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
# USD per million (prompt, completion) tokens at OpenAI's list prices, as its pricing page gave them in 2026-03; older
# judges at the price they were last listed at. --price_per_mtok overrides.
PRICE_TABLE_DATE = "2026-03"
PRICES_USD_PER_MTOK = {
    "gpt-4": (30.0, 60.0), "gpt-4-0314": (30.0, 60.0), "gpt-4-0613": (30.0, 60.0),
    "gpt-4-turbo": (10.0, 30.0), "gpt-4-1106-preview": (10.0, 30.0), "gpt-4-0125-preview": (10.0, 30.0),
    "gpt-4o-2024-05-13": (5.0, 15.0), "gpt-4o": (2.5, 10.0), "gpt-4o-2024-08-06": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6), "gpt-4.1": (2.0, 8.0), "gpt-4.1-mini": (0.4, 1.6), "gpt-4.1-nano": (0.1, 0.4),
    "o3-mini": (1.1, 4.4), "o3-mini-2025-01-31": (1.1, 4.4), "gpt-3.5-turbo": (0.5, 1.5),
}
CHARS_PER_TOKEN = 4.0  # no tokenizer of the judge is at hand: English text runs at about 4 characters a token
EXPECTED_COMPLETION_TOKENS = 300  # a judge's explanation and verdict; max_tokens is the upper bound


@dataclass
class EvalJudgeArguments:
    """Recipe/CLI keys of the judge of run_mt_bench, run_alpaca_eval and run_arena_hard."""

    judge_model: str | None = field(default=None, metadata={
        "help": "An OpenAI model, a model at judge_base_url, or a local checkpoint folder served for the run (default: "
                "the benchmark's official judge)."})
    judge_base_url: str | None = field(default=None, metadata={"help": f"OpenAI-compatible endpoint (default "
                                                                       f"{OPENAI_URL})."})
    judge_api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Variable holding the judge's key."})
    judge_parallel: int = field(default=8, metadata={"help": "Judge requests in flight at once."})
    judge_max_tokens: int | None = field(default=None, metadata={
        "help": "Tokens a judge may write per verdict (default: the benchmark's, e.g. FastChat's 2048)."})
    judge_engine: Literal["auto", "vllm", "sglang", "transformers"] = field(
        default="auto", metadata={"help": "Engine serving a local checkpoint judge."})
    price_per_mtok: str | None = field(default=None, metadata={"help": "USD per million prompt,completion tokens "
                                                                        "(default: the list price table)."})
    judge_scoring: Literal["verdict", "logprobs"] = field(
        default="verdict", metadata={"help": "verdict: the rating the judge writes (the official tools); logprobs: "
                                             "its probability-weighted rating (eval/rating_logprobs.py)."})
    judge_top_logprobs: int = field(default=20, metadata={"help": "Alternatives per token asked of an HTTP judge "
                                                                  "with judge_scoring=logprobs."})
    y: bool = field(default=False, metadata={"help": "Make the paid calls without asking."})


def with_default_judge(args: EvalJudgeArguments, model: str, max_tokens: int) -> EvalJudgeArguments:
    """`args` with the benchmark's official judge and verdict length where none were given."""
    return replace(args, judge_model=args.judge_model or model, judge_max_tokens=args.judge_max_tokens or max_tokens)


@dataclass(frozen=True)
class JudgeCall:
    """How one batch of judgments is asked for; all of it is part of each judgment's cache key.

    rating: also the distribution over 1-10 at the judge's "[[" (MT-Bench with judge_scoring=logprobs).
    first_token: also the logprobs of these first tokens (AlpacaEval's logprob-weighted annotators).
    """

    max_tokens: int
    temperature: float = 0.0
    top_logprobs: int = 0
    rating: bool = False
    first_token: tuple[str, ...] | None = None


def judgment_provenance(judgment: dict) -> dict[str, Any]:
    """What a judgment row records of where its verdict came from: the model id the API answered with and when."""
    return {"judge_model_id": judgment.get("model_id"), "judgment_date": judgment.get("date")}


def estimate(requests: Sequence[Sequence[dict]], model: str, max_tokens: int,
             price_per_mtok: str | None = None) -> dict[str, Any]:
    """Calls, estimated tokens and estimated cost (None where no price is known) of judging `requests`."""
    prompt_tokens = sum(len(m["content"]) for request in requests for m in request) / CHARS_PER_TOKEN
    expected = len(requests) * min(EXPECTED_COMPLETION_TOKENS, max_tokens)
    if price_per_mtok:
        prices, source = tuple(float(p) for p in price_per_mtok.split(",")), "--price_per_mtok"
    else:
        prices, source = PRICES_USD_PER_MTOK.get(model), f"list price {PRICE_TABLE_DATE}"
    out = {"calls": len(requests), "prompt_tokens": int(prompt_tokens), "completion_tokens": expected,
           "completion_tokens_at_most": len(requests) * max_tokens, "price_source": source if prices else None}
    if prices:
        out["cost_usd"] = (prompt_tokens * prices[0] + expected * prices[1]) / 1e6
        out["cost_usd_at_most"] = (prompt_tokens * prices[0] + len(requests) * max_tokens * prices[1]) / 1e6
    return out


class EvalJudge:
    """A judge with its cache file (see the module docstring); `paid` counts the calls made through it."""

    def __init__(self, args: EvalJudgeArguments, cache_path: str | Path, gen_args: GenerationArguments | None = None,
                 confirm: Callable[[str], str] = input):
        if not args.judge_model or not args.judge_max_tokens:
            raise ValueError("the judge needs judge_model and judge_max_tokens (with_default_judge gives defaults)")
        self.args = args
        # with judge_base_url the model is what that server serves, even where its name is a folder here
        self.local_checkpoint = not args.judge_base_url and Path(args.judge_model).expanduser().is_dir()
        self.url = None if self.local_checkpoint else (args.judge_base_url or OPENAI_URL)
        self.cache = ResumableJsonl(cache_path, key="key")
        self.gen_args = gen_args or GenerationArguments()
        rating = args.judge_scoring == "logprobs"
        self.default_call = JudgeCall(max_tokens=args.judge_max_tokens, rating=rating,
                                      top_logprobs=args.judge_top_logprobs if rating else 0)
        self.calls_used: set[JudgeCall] = set()
        self.confirm = confirm
        self.paid = 0
        self.model_ids: set[str] = {r["model_id"] for r in self.cache.rows() if r.get("model_id")}

    @property
    def name(self) -> str:
        """The judge as the result files name it (a local checkpoint by its folder name; logprob scoring marked, so
        its scores never share a file with written verdicts)."""
        model = self.args.judge_model
        name = Path(model).name if self.local_checkpoint or model.startswith(("/", "./", "~")) else model
        return f"{name}+logprobs" if self.args.judge_scoring == "logprobs" else name

    @property
    def file_stem(self) -> str:
        """The name in result file names (a hub id's "/" would make a folder)."""
        return self.name.replace("/", "_")

    def in_process(self, call: JudgeCall) -> bool:
        """A local checkpoint judge asked for logprobs runs in process: `transformers serve` returns none."""
        if not (self.local_checkpoint and (call.rating or call.first_token)):
            return False
        from chatalign.generation.engines import has_gpu, is_installed, select_engine

        engine = select_engine(self.args.judge_engine, has_gpu(), {e: is_installed(e) for e in ("vllm", "sglang")})
        return engine == "transformers"

    def key(self, messages: Sequence[dict], call: JudgeCall | None = None) -> str:
        """store.judgment_key of (judge, how it was asked as the kind, the full messages)."""
        return judgment_key(self.args.judge_model, f"chat:{content_hash(asdict(call or self.default_call))[:16]}",
                            messages)

    def paid_endpoint(self) -> bool:
        return not self.local_checkpoint and not is_loopback(self.url)

    def judge(self, requests: Sequence[Sequence[dict]], progress: bool = True,
              call: JudgeCall | None = None) -> list[dict | None]:
        """The judgment of every request: {"output": text}, plus "rating_probs" ({rating: p}) or
        "first_token_logprobs" ({token: logprob}) as `call` asks (None where the call failed for good: not cached,
        asked again by the next run), asking only for what the cache lacks, after the estimate and confirmation."""
        call = call or self.default_call
        self.calls_used.add(call)
        keys = [self.key(r, call) for r in requests]
        todo = {}
        for key, request in zip(keys, requests, strict=True):
            if key not in self.cache and key not in todo:
                todo[key] = request
        if todo:
            if self.paid_endpoint() and not os.environ.get(self.args.judge_api_key_env):
                raise ValueError(f"judge {self.args.judge_model} at {self.url}: ${self.args.judge_api_key_env} is not "
                                 f"set, and {len(todo)} judgments are not in the cache {self.cache.path}")
            self._confirm(list(todo.values()), call)
            if self.in_process(call):
                self._rate_in_process(todo, progress, call)
            else:
                with self._client() as client:
                    self._ask(client, todo, progress, call)
        return [self.cache.get(k) for k in keys]

    def _confirm(self, requests: list[Sequence[dict]], call: JudgeCall) -> None:
        plan = estimate(requests, self.args.judge_model, call.max_tokens, self.args.price_per_mtok)
        cost = (f"${plan['cost_usd']:.2f} (at most ${plan['cost_usd_at_most']:.2f}; {plan['price_source']})"
                if "cost_usd" in plan else "unknown (no list price for this model; give --price_per_mtok)")
        where = self.args.judge_model if self.local_checkpoint else f"{self.args.judge_model} at {self.url}"
        message = (f"judge {where}: {plan['calls']} calls not in the cache, about {plan['prompt_tokens']:,} prompt and "
                   f"{plan['completion_tokens']:,} completion tokens (at most {plan['completion_tokens_at_most']:,}); "
                   f"estimated cost {cost}")
        print(message, file=sys.stderr, flush=True)
        if self.paid_endpoint() and not self.args.y:
            answer = self.confirm("Make these calls? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                raise SystemExit("no judge call made (answer y, or pass --y)")

    @contextlib.contextmanager
    def _client(self) -> Iterator[ChatClient]:
        base = replace(self.gen_args, gen_parallel=self.args.judge_parallel, api_key_env=self.args.judge_api_key_env)
        if not self.local_checkpoint:
            args = replace(base, backend="openai", base_url=self.url, server_ports=None,
                           served_model_name=self.args.judge_model,
                           engine="transformers" if self.args.judge_engine == "transformers" else "auto")
            client = client_from_args(args, self.args.judge_model)
            try:
                yield client
            finally:
                client.close()
            return
        from chatalign.generation.servers import serve

        args = replace(base, backend="server", engine=self.args.judge_engine, server_ports=None)
        with serve(self.args.judge_model, args) as endpoints:
            client = ChatClient(list(endpoints), endpoints.model, parallel=self.args.judge_parallel,
                                timeout=args.request_timeout, max_retries=args.max_retries, backoff=args.retry_backoff,
                                extra_body=endpoints.extra_body)
            try:
                yield client
            finally:
                client.close()

    def _ask(self, client: ChatClient, todo: dict[str, Sequence[dict]], progress: bool, call: JudgeCall) -> None:
        from tqdm.auto import tqdm

        params = SamplingParams(n=1, temperature=call.temperature, max_tokens=call.max_tokens,
                                top_logprobs=call.top_logprobs)
        client.check_reachable()  # an unreachable judge is named before any work is sent to it
        bar = tqdm(total=len(todo), desc=f"judge {self.name}", disable=not progress)
        try:
            for key, completions in self._iter_judged(client, todo, params):
                if not completions:
                    continue  # nothing came back: not cached, asked again by the next run
                output = completions[0]
                row = {"output": str(output)}
                if call.rating:
                    row["rating_probs"] = self._http_rating(client, todo[key], output, params)
                if call.first_token:
                    if not getattr(output, "logprobs", None):
                        raise ValueError(self._no_logprobs("its answer had none"))
                    row["first_token_logprobs"] = output.logprobs[0][1]
                model_id = next(iter(client.served_models), None) if len(client.served_models) == 1 else None
                self._record(key, row, model_id)
                bar.update(1)
        finally:
            bar.close()
            self.model_ids |= client.served_models

    def _iter_judged(self, client: ChatClient, todo: dict[str, Sequence[dict]], params: SamplingParams):
        try:
            yield from client.iter_many([(k, list(m), params) for k, m in todo.items()])
        except ChatRequestError as err:
            if params.top_logprobs and err.status in (400, 422):
                raise ValueError(self._no_logprobs(f"rejected the request: {err}")) from None
            raise

    def _no_logprobs(self, why: str) -> str:
        return (f"judge {self.args.judge_model} at {self.url} returns no logprobs ({why}); judge_scoring=logprobs "
                "needs a server that does (vLLM, SGLang, OpenAI) or a local checkpoint judge, scored in process")

    def _http_rating(self, client: ChatClient, messages, output, params: SamplingParams) -> dict | None:
        """The rating distribution at the judge's "[[", or, where it wrote none, in its answer to one follow-up."""
        from chatalign.eval.rating_logprobs import FOLLOW_UP, probs_from_top_logprobs

        if getattr(output, "logprobs", None) is None:
            raise ValueError(self._no_logprobs("its answer had none"))
        probs = probs_from_top_logprobs(output, output.logprobs)
        if probs is None and "[[" not in output:
            follow = [*messages, {"role": "assistant", "content": str(output)}, {"role": "user", "content": FOLLOW_UP}]
            again = client.chat(follow, replace(params, max_tokens=8))[0]
            self.paid += 1
            probs = probs_from_top_logprobs(again, again.logprobs or [])
        return probs

    def _rate_in_process(self, todo: dict[str, Sequence[dict]], progress: bool, call: JudgeCall) -> None:
        from tqdm.auto import tqdm

        from chatalign.eval.rating_logprobs import InProcessRater

        rater = InProcessRater(self.args.judge_model, self.gen_args.gen_chat_template, self.gen_args.gen_batch_size)
        items = list(todo.items())
        step = max(self.gen_args.gen_batch_size, 1)
        bar = tqdm(total=len(items), desc=f"judge {self.name} (in process)", disable=not progress)
        for start in range(0, len(items), step):  # each batch cached as it finishes
            chunk = items[start:start + step]
            conversations = [list(m) for _, m in chunk]
            if call.first_token:
                rows = [{"output": max(logprobs, key=logprobs.get), "first_token_logprobs": logprobs}
                        for logprobs in rater.choice_logprobs(conversations, list(call.first_token))]
            else:
                rows = [{"output": text, "rating_probs": probs}
                        for text, probs in rater.rate(conversations, call.max_tokens)]
            for (key, _), row in zip(chunk, rows, strict=True):
                self._record(key, row, self.args.judge_model)
            bar.update(len(chunk))
        bar.close()
        self.model_ids.add(self.args.judge_model)

    def _record(self, key: str, row: dict, model_id: str | None) -> None:
        self.cache.add({"key": key, "judge": self.args.judge_model, "model_id": model_id, **row,
                        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        self.paid += 1

    def provenance(self, prompt_version: str) -> dict[str, Any]:
        """What every result file records of its judge: the name asked for, the model id(s) the API answered with, the
        prompt version and the date."""
        return {"judge": self.args.judge_model, "judge_model_id": sorted(self.model_ids) or None,
                "judge_endpoint": "local checkpoint" if self.local_checkpoint else self.url,
                "prompt_version": prompt_version, "scoring": self.args.judge_scoring,
                "sampling": [asdict(c) for c in sorted(self.calls_used or {self.default_call}, key=str)],
                "date": datetime.date.today().isoformat()}
