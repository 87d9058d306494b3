"""Generation from a model path, written as it goes and resumable, through one of several backends.

`generate(model, items, params, gen_args, output_file)` is the one entry point: items are conversations keyed by id;
every finished item is appended to a JSONL file at once; a rerun skips ids already there, so an interrupted run loses
at most the items in flight. Backends (``gen_args.backend``):
  - "openai": running OpenAI-compatible endpoints (OpenAI, `vllm serve`, SGLang, `transformers serve`) through
    `ChatClient`: bounded parallelism, retries with backoff, round-robin over several endpoints.
  - "server": a local server launched for the model path (chatalign.servers.serve), used like "openai", then stopped.
  - "vllm":   vLLM's offline `LLM.generate` with tensor parallelism (``world_size``).
  - "transformers": batched in-process `generate`, the CPU fallback.
  - "auto":   "openai" when base_url/server_ports is set, else "vllm" where installed with a GPU, else "transformers".

Chat template: in process (transformers, vllm) prompts are rendered with the checkpoint's template or
``gen_chat_template``. Over HTTP the server renders: a launched server is given ``gen_chat_template``; a running
server ("openai") always uses its own template, and ``gen_chat_template`` then only supplies stop strings. In every
backend ``gen_chat_template``'s stop strings are used when ``params.stop`` is empty.

Seeds: every item gets its own seed, derived from ``params.seed`` and its id (`item_seed`), and sample j of an item
uses ``sample_seed(item seed, j)`` where samples are drawn one request at a time. A resumed run therefore asks for
exactly what a clean run would, whichever items are already done. Over HTTP the seed is sent with each request;
how faithfully a server honours it is the server's business (vLLM and SGLang: per request; `transformers serve`
reseeds its global torch RNG per request, which is only reproducible with gen_parallel=1 since requests share the
RNG). In process, see `generate_local`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

SEED_MASK = 0x7FFFFFFF  # seeds stay in [0, 2**31): every engine accepts them


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int = 0


def item_seed(seed: int, item_id: Any) -> int:
    """The seed of one item: a hash of the run's seed and the item id (as text, like ResumableJsonl keys)."""
    digest = hashlib.sha256(f"{seed}\x00{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & SEED_MASK


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of an item whose seed is `seed` (sample 0 uses the item seed itself)."""
    return (seed + index) & SEED_MASK


def _truncate_at_stop(text: str, stop: list[str]) -> str:
    cut = len(text)
    for s in stop:
        pos = text.find(s)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut]


def _encode_prompts(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    # The chat template already writes any bos token; don't let the tokenizer add a second one.
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def _seeded_sampler(row_seeds: list[int], temperature: float, top_p: float, device):
    """A logits processor that samples every row with its own torch.Generator and leaves only that token.

    `generate` then runs in greedy mode and picks the sampled token. Each row's draws depend only on its seed and its
    own logits, not on which other prompts share the batch, which the global RNG of `do_sample=True` cannot give.
    """
    import torch
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        def __init__(self):
            self.generators = [torch.Generator(device=device).manual_seed(s) for s in row_seeds]

        def __call__(self, input_ids, scores):
            logits = scores.float() / temperature
            if top_p < 1.0:
                ordered, order = torch.sort(logits, descending=True, dim=-1)
                probs = ordered.softmax(dim=-1)
                # Drop a token once the tokens before it already cover top_p (the most likely one always stays).
                ordered = ordered.masked_fill(probs.cumsum(dim=-1) - probs > top_p, float("-inf"))
                logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
            probs = logits.softmax(dim=-1)
            picks = torch.stack([torch.multinomial(probs[row], 1, generator=gen)
                                 for row, gen in enumerate(self.generators)])
            return torch.full_like(scores, float("-inf")).scatter(1, picks, 0.0)

    return SeededSampler()


def _strip_specials(text: str, specials: list[str]) -> str:
    for token in specials:
        text = text.replace(token, "")
    return text


def generate_local(model, tokenizer, conversations: list[list[dict]], params: SamplingParams,
                   batch_size: int = 8, progress: bool = True, seeds: list[int] | None = None) -> list[list[str]]:
    """`params.n` completions for each conversation (a list of messages ending with a user turn), in input order.

    Batches are formed from prompts sorted by length, so little compute goes to padding; left padding keeps every
    prompt's last token next to its first generated token.

    Sampling (temperature > 0) is reproducible per conversation: sample j of conversation i is drawn from its own
    generator seeded with ``sample_seed(seeds[i], j)`` (seeds default to ``item_seed(params.seed, i)``), so the same
    conversation gets the same samples whatever else is in its batch, e.g. when a resumed run generates only the
    missing items. (Padding can still move logits by float rounding, which very rarely changes a draw.)
    """
    import torch
    from tqdm.auto import tqdm

    if seeds is None:
        seeds = [item_seed(params.seed, i) for i in range(len(conversations))]
    if len(seeds) != len(conversations):
        raise ValueError(f"generate_local: {len(seeds)} seeds for {len(conversations)} conversations")
    encoded = _encode_prompts(tokenizer, conversations)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    results: list[list[str]] = [[] for _ in conversations]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    do_sample = params.temperature > 0
    model.eval()
    bar = tqdm(total=len(order), desc="generate", disable=not progress)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        # Greedy decoding gives the same text n times: decode once per prompt. Sampling decodes each prompt n times,
        # row r*copies + j being sample j of prompt r.
        copies = params.n if do_sample else 1
        input_ids = torch.full((len(batch) * copies, width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch) * copies, width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = encoded[i]
            rows = slice(row * copies, (row + 1) * copies)
            input_ids[rows, width - len(ids):] = torch.tensor(ids)
            attention[rows, width - len(ids):] = 1
        processors = []
        if do_sample:
            row_seeds = [sample_seed(seeds[i], j) for i in batch for j in range(copies)]
            processors.append(_seeded_sampler(row_seeds, params.temperature, params.top_p, device))
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=params.max_tokens,
                do_sample=False,  # sampling, when asked for, is done by the seeded processor
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=processors or None,
                pad_token_id=pad_id,
            )
        new_tokens = out[:, width:]
        # Keep special tokens until the stop strings have cut the text: most stops (<|im_end|>, </s>) are special
        # tokens, and skipping them first would leave nothing to cut at.
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=False)
        # what skip_special_tokens would drop: the special map plus every added token flagged special
        specials = sorted({t for t in tokenizer.all_special_tokens if t} | {
            t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}, key=len,
            reverse=True)
        for row, i in enumerate(batch):
            samples = [_strip_specials(_truncate_at_stop(t, params.stop), specials).strip()
                       for t in texts[row * copies:(row + 1) * copies]]
            results[i] = samples if do_sample else samples * params.n
        bar.update(len(batch))
    bar.close()
    return results


# --------------------------------------------------------------------------------------------------------------------
# Shared recipe keys and the resumable output file


@dataclass
class GenerationArguments:
    """Recipe/CLI keys of every script that generates (generate.py, gen_preference_pairs.py, the eval scripts)."""

    backend: Literal["auto", "openai", "server", "vllm", "transformers"] = field(
        default="auto",
        metadata={"help": "auto: openai if base_url/server_ports is set, else vllm offline where installed with a "
                          "GPU, else transformers in process."},
    )
    base_url: str | None = field(default=None, metadata={"help": "An OpenAI-compatible endpoint, e.g. "
                                                                 "http://127.0.0.1:8000/v1 or https://api.openai.com/v1 "
                                                                 "(several: comma-separated)"})
    server_ports: list[int] | None = field(
        default=None, metadata={"help": "Local endpoints http://127.0.0.1:<port>/v1 to balance requests over "
                                        "(backend=server: the ports to launch servers on)."})
    served_model_name: str | None = field(default=None, metadata={"help": "Model name sent in requests."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the key."})
    gen_parallel: int = field(default=8, metadata={"help": "Requests in flight at once (HTTP backends)."})
    request_timeout: float = field(default=600.0, metadata={"help": "Seconds before one request is retried."})
    max_retries: int = field(default=5, metadata={"help": "Retries on timeouts, 429 and 5xx, with backoff."})
    engine: Literal["auto", "vllm", "sglang", "transformers"] = field(
        default="auto", metadata={"help": "Server engine for backend=server: vLLM (GPU), SGLang, transformers serve. "
                                          "With backend=openai, 'transformers' says the running server is "
                                          "`transformers serve` (it then needs an extra request field to sample)."})
    server_start_timeout: float = field(default=900.0, metadata={"help": "Seconds to wait for a launched server."})
    world_size: int = field(default=1, metadata={"help": "Tensor parallel size for vLLM."})
    gen_batch_size: int = field(default=8, metadata={"help": "Prompts per batch for the transformers backend."})
    gen_chat_template: str | None = field(
        default=None, metadata={"help": "Template to render prompts with (default: the checkpoint's own). A running "
                                        "server (backend=openai) renders with its own template."})
    retry_backoff: float = field(
        default=1.0, metadata={"help": "Seconds before the first retry; doubles with every further retry."})
    server_log_dir: str | None = field(
        default=None, metadata={"help": "Folder for launched servers' logs (default: a temporary folder)."})
    server_extra_args: str | None = field(
        default=None, metadata={"help": "Extra arguments for the launched server, e.g. '--gpu-memory-utilization 0.8'."})


class ResumableJsonl:
    """A JSONL file of finished rows keyed by `key`: read on open, appended to (and flushed) as rows finish.

    An interrupted run loses at most the rows in flight; a torn last line (killed mid-write) is dropped on reading.
    """

    def __init__(self, path: str | Path, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self._rows: dict[str, dict] = {}
        if self.path.is_file():
            self._drop_torn_tail()
            with self.path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        logger.warning("%s line %d is incomplete (interrupted write): ignored", self.path, number)
                        continue
                    self._rows[str(row[key])] = row

    def _drop_torn_tail(self) -> None:
        """Cut a last line left without its newline by a killed write, so the next append starts on a fresh line."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            try:
                json.loads(data[keep:])
            except ValueError:
                logger.warning("%s: dropping an incomplete last line (interrupted write)", self.path)
                with self.path.open("r+b") as handle:
                    handle.truncate(keep)
                return
            with self.path.open("ab") as handle:  # a whole row without its newline (written by hand)
                handle.write(b"\n")

    def __contains__(self, row_id: Any) -> bool:
        return str(row_id) in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, row_id: Any) -> dict | None:
        return self._rows.get(str(row_id))

    def add(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._rows[str(row[self.key])] = row

    def rows(self) -> list[dict]:
        return list(self._rows.values())


def item_messages(item: dict) -> list[dict]:
    """An item's conversation: "messages", else "prompt" (a list of messages, or a text sent as one user turn)."""
    messages = item.get("messages", item.get("prompt"))
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return messages


def check_items(items: list[dict], source: str = "items") -> None:
    """Every item needs a unique id and a conversation ending with a user turn; say which one does not."""
    seen = set()
    for index, item in enumerate(items):
        if "id" not in item:
            raise ValueError(f"{source} row {index}: no 'id'")
        if str(item["id"]) in seen:
            raise ValueError(f"{source} row {index}: duplicate id {item['id']!r}")
        seen.add(str(item["id"]))
        messages = item_messages(item)
        if not messages or not isinstance(messages, list) or not isinstance(messages[-1], dict) \
                or messages[-1].get("role") != "user":
            field_name = "messages" if "messages" in item or "prompt" not in item else "prompt"
            raise ValueError(f"{source} row {index} (id {item['id']!r}), field '{field_name}': "
                             "must be a list of messages ending with a user turn")


# --------------------------------------------------------------------------------------------------------------------
# OpenAI-compatible client: bounded parallelism, retries with backoff, round-robin over endpoints


class EndpointError(ConnectionError):
    """Every attempt of a request failed with a retryable error (timeout, connection, 429, 5xx)."""

    def __init__(self, message: str, url: str, errors: list[tuple[str, str]]):
        super().__init__(message)
        self.url = url
        self.errors = errors


class ChatRequestError(RuntimeError):
    """An endpoint rejected a request with an error that retrying cannot fix (400, 401, 404, ...)."""

    def __init__(self, message: str, url: str, status: int | None):
        super().__init__(message)
        self.url = url
        self.status = status


class _Cancelled(Exception):
    """Raised in a worker whose batch was abandoned (another request failed for good)."""


_RETRYABLE_STATUS = {408, 409, 429}
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _is_loopback(url: str) -> bool:
    return (urlparse(url).hostname or "") in _LOOPBACK_HOSTS


def _is_openai(url: str) -> bool:
    return (urlparse(url).hostname or "").endswith("api.openai.com")


def _retry_after(err) -> float | None:
    response = getattr(err, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class ChatClient:
    """An OpenAI-compatible chat client over one or more endpoints (`client.chat.completions.create`).

    * `parallel` requests at most are in flight (across `chat_many` and concurrent `chat` calls).
    * Each attempt goes to the next endpoint in turn (round-robin), so load spreads evenly and a retry after a failed
      attempt tries another endpoint.
    * Timeouts, connection errors, 408/409/429 and 5xx are retried `max_retries` times, waiting `backoff` seconds
      doubled at each retry (at most `max_backoff`, at least what a Retry-After header asks); then `EndpointError`
      names the endpoint. Other errors raise `ChatRequestError` at once.
    * n > 1 is asked for in one request; a server that returns fewer choices (transformers serve ignores n) or
      rejects n gets the missing samples one request each, sample j seeded with ``sample_seed(params.seed, j)``.
    * Completions are cut at the first stop string, whether or not the server did.
    * `extra_body`: server-specific request fields (e.g. `transformers serve`'s "generation_config").
    The API key is only handed to the HTTP client; it is never logged or part of an error.
    """

    def __init__(self, base_urls: list[str] | str, model: str, api_key: str | None = None, parallel: int = 8,
                 timeout: float = 600.0, max_retries: int = 5, backoff: float = 1.0, max_backoff: float = 60.0,
                 extra_body: dict | None = None):
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        self.base_urls = [url.rstrip("/") for url in urls if url]
        if not self.base_urls:
            raise ValueError("ChatClient needs at least one base URL")
        self.model = model
        self.parallel = max(int(parallel), 1)
        self.timeout = float(timeout)
        self.max_retries = max(int(max_retries), 0)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.extra_body = dict(extra_body) if extra_body else None
        self._api_key = api_key
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._slots = threading.BoundedSemaphore(self.parallel)
        self._n_supported: bool | None = None

    def __repr__(self) -> str:
        return f"ChatClient({self.base_urls!r}, model={self.model!r}, parallel={self.parallel})"

    # -- transport ----------------------------------------------------------------------------------------------

    def _client(self, url: str):
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                import openai

                kwargs = {}
                if _is_loopback(url):
                    # A proxy from the environment must not intercept requests to a local server.
                    kwargs["http_client"] = openai.DefaultHttpxClient(trust_env=False)
                client = openai.OpenAI(base_url=url, api_key=self._api_key or "EMPTY", max_retries=0,
                                       timeout=self.timeout, **kwargs)
                self._clients[url] = client
            return client

    def _send(self, url: str, body: dict) -> list[str]:
        """One HTTP request; the choices' texts in index order. (Tests wrap this to watch traffic.)"""
        response = self._client(url).chat.completions.create(**body)
        choices = sorted(response.choices, key=lambda choice: choice.index)
        return [choice.message.content or "" for choice in choices]

    def _next_url(self) -> str:
        return self.base_urls[next(self._turn) % len(self.base_urls)]

    def _body(self, url: str, messages: list[dict], params: SamplingParams, n: int, seed: int) -> dict:
        body = {"model": self.model, "messages": messages, "temperature": params.temperature, "top_p": params.top_p,
                "seed": seed}
        # OpenAI's newer models only take max_completion_tokens; other servers know max_tokens best.
        body["max_completion_tokens" if _is_openai(url) else "max_tokens"] = params.max_tokens
        if n > 1:
            body["n"] = n
        if params.stop:
            body["stop"] = list(params.stop)
        if self.extra_body:
            body["extra_body"] = self.extra_body  # server-specific fields, merged into the JSON by the SDK
        return body

    def _classify(self, err: Exception) -> tuple[bool, int | None, str]:
        """(retryable, HTTP status, reason) of a failed attempt."""
        import openai

        if isinstance(err, openai.APITimeoutError):
            return True, None, f"no answer within {self.timeout:g} s (timeout)"
        if isinstance(err, openai.APIConnectionError):
            cause = err.__cause__ or err
            return True, None, f"connection failed ({type(cause).__name__}: {cause})"
        if isinstance(err, openai.APIStatusError):
            status = err.status_code
            retryable = status in _RETRYABLE_STATUS or status >= 500
            return retryable, status, f"HTTP {status}: {str(err.message)[:500]}"
        return False, None, f"{type(err).__name__}: {err}"

    def _request(self, messages: list[dict], params: SamplingParams, n: int, seed: int,
                 cancel: threading.Event | None = None) -> list[str]:
        """One logical request with retries; the completions cut at stop strings."""
        errors: list[tuple[str, str]] = []
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            url = self._next_url()
            body = self._body(url, messages, params, n, seed)
            try:
                with self._slots:
                    texts = self._send(url, body)
                return [_truncate_at_stop(text, params.stop) for text in texts]
            except Exception as err:
                retryable, status, reason = self._classify(err)
                if self._api_key:  # some servers echo the key they rejected
                    reason = reason.replace(self._api_key, "***")
                if not retryable:
                    # `from None`: the original exception's message may echo the key, and a chained traceback prints it.
                    raise ChatRequestError(f"chat completion request to {url} failed: {reason}", url, status) from None
                errors.append((url, reason))
                if attempt + 1 == attempts:
                    break
                delay = min(self.backoff * 2 ** attempt, self.max_backoff)
                wanted = _retry_after(err)
                if wanted is not None:
                    delay = max(delay, min(wanted, self.max_backoff))
                logger.warning("%s: %s; retry %d of %d in %.2f s", url, reason, attempt + 1, self.max_retries, delay)
                if cancel is not None:
                    if cancel.wait(delay):
                        raise _Cancelled() from err
                else:
                    time.sleep(delay)
        last_url, last_reason = errors[-1]
        tried = sorted({url for url, _ in errors})
        message = (f"chat completion request failed {len(errors)} times, last at {last_url}: {last_reason}"
                   + (f" (endpoints tried: {', '.join(tried)})" if len(tried) > 1 else "")
                   + ". Is the server running? Rerun the same command to resume.")
        raise EndpointError(message, last_url, errors)

    # -- public API ---------------------------------------------------------------------------------------------

    def chat(self, messages: list[dict], params: SamplingParams) -> list[str]:
        """`params.n` completions of a conversation (seeded with `params.seed`)."""
        return self._chat(messages, params)

    def _chat(self, messages: list[dict], params: SamplingParams, cancel: threading.Event | None = None) -> list[str]:
        n = max(params.n, 1)
        texts: list[str] = []
        if n > 1 and self._n_supported is not False:
            try:
                texts = self._request(messages, params, n, params.seed, cancel)
            except ChatRequestError as err:
                if err.status not in (400, 422):
                    raise
                logger.warning("%s rejected n=%d (%s); asking for one sample per request", err.url, n, err)
                self._n_supported, texts = False, []
            if len(texts) >= n:
                self._n_supported = True
                return texts[:n]
            if texts:
                if self._n_supported is not False:
                    logger.warning("the server returned %d of n=%d choices; asking for one sample per request",
                                   len(texts), n)
                self._n_supported = False
                texts = texts[:1]  # the sample a one-choice request with the same seed would have given
        for index in range(len(texts), n):
            texts += self._request(messages, params, 1, sample_seed(params.seed, index), cancel)[:1]
        return texts

    def iter_many(self, requests: Iterable[tuple[Any, list[dict], SamplingParams]]) -> Iterator[tuple[Any, list[str]]]:
        """Run (key, messages, params) requests with `parallel` in flight; yield (key, completions) as they finish.

        Results are yielded in the caller's thread. When a request fails for good, no new request starts, the ones in
        flight are still yielded when they succeed, and then the error is raised. The worker threads are daemons:
        an interrupted caller is not held up by requests still in flight.
        """
        tasks: queue.SimpleQueue = queue.SimpleQueue()
        count = 0
        for request in requests:
            tasks.put(request)
            count += 1
        if not count:
            return
        results: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()

        def work() -> None:
            try:
                while not stop.is_set():
                    try:
                        key, messages, params = tasks.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        results.put(("ok", key, self._chat(messages, params, stop)))
                    except _Cancelled:
                        return
                    except BaseException as err:  # handed to the caller's thread
                        results.put(("error", key, err))
                        return
            finally:
                results.put(("done", None, None))

        workers = [threading.Thread(target=work, name=f"chatalign-chat-{i}", daemon=True)
                   for i in range(min(self.parallel, count))]
        for worker in workers:
            worker.start()
        error: BaseException | None = None
        running = len(workers)
        try:
            while running:
                kind, key, value = results.get()
                if kind == "done":
                    running -= 1
                elif kind == "error":
                    if error is None:
                        error = value
                    stop.set()
                else:
                    yield key, value
        finally:
            stop.set()
        if error is not None:
            raise error

    def chat_many(self, requests: Iterable[tuple[Any, list[dict], SamplingParams]],
                  on_result: Callable[[Any, list[str]], None]) -> None:
        """Run the requests with `parallel` in flight; `on_result(key, completions)` in the caller's thread."""
        for key, completions in self.iter_many(requests):
            on_result(key, completions)

    def check_reachable(self, timeout: float | None = None) -> None:
        """Raise ConnectionError naming the first endpoint that does not answer GET /models within the timeout.

        Any HTTP answer counts as reachable (a 401 from OpenAI without a key included): this is about the network.
        """
        import httpx

        timeout = min(self.timeout, 30.0) if timeout is None else timeout
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        for url in self.base_urls:
            try:
                with httpx.Client(timeout=timeout, trust_env=not _is_loopback(url)) as client:
                    client.get(f"{url}/models", headers=headers)
            except httpx.TimeoutException:
                raise ConnectionError(f"endpoint {url} did not answer within {timeout:g} s") from None
            except httpx.HTTPError as err:
                raise ConnectionError(f"endpoint {url} is not reachable: {type(err).__name__}: {err}") from None

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def endpoint_urls(gen_args: GenerationArguments) -> list[str]:
    """base_url (comma-separated for several) and http://127.0.0.1:<port>/v1 for every port in server_ports."""
    from chatalign.servers import LOOPBACK, parse_ports

    urls = [url.strip() for url in (gen_args.base_url or "").split(",") if url.strip()]
    urls += [f"http://{LOOPBACK}:{port}/v1" for port in parse_ports(gen_args.server_ports)]
    return urls


def client_from_args(gen_args: GenerationArguments, model: str) -> ChatClient:
    """A ChatClient for gen_args' endpoints; the model name sent is served_model_name or `model`.

    With engine=transformers the endpoints are taken to be `transformers serve`, whose requests need an extra field
    to sample at all (see chatalign.servers.TRANSFORMERS_SERVE_EXTRA_BODY); other servers must not get it (OpenAI
    rejects unknown fields).
    """
    urls = endpoint_urls(gen_args)
    if not urls:
        raise ValueError("the openai backend needs base_url or server_ports")
    api_key = os.environ.get(gen_args.api_key_env) if gen_args.api_key_env else None
    if not api_key and any(not _is_loopback(url) for url in urls):
        logger.warning("no API key in $%s for %s", gen_args.api_key_env, ", ".join(urls))
    extra_body = None
    if gen_args.engine == "transformers":
        from chatalign.servers import TRANSFORMERS_SERVE_EXTRA_BODY

        extra_body = TRANSFORMERS_SERVE_EXTRA_BODY  # the running server is transformers serve: turn sampling on
    return ChatClient(urls, gen_args.served_model_name or model, api_key=api_key, parallel=gen_args.gen_parallel,
                      timeout=gen_args.request_timeout, max_retries=gen_args.max_retries,
                      backoff=gen_args.retry_backoff, extra_body=extra_body)


# --------------------------------------------------------------------------------------------------------------------
# generate(): the entry point


def generate(model: str, items: Iterable[dict], params: SamplingParams, gen_args: GenerationArguments,
             output_file: str | Path, progress: bool = True) -> list[dict]:
    """Generate `params.n` completions for every item not yet in `output_file`; return all rows in item order.

    items: {"id": unique, "messages": [... ending with a user turn], **extras} ("prompt" instead of "messages" works
    too). Each output row is the item plus "completions" (list of n strings, stripped) and "generator"
    ({model, backend, params}); it is appended to `output_file` as soon as it finishes, so a rerun of the same command
    generates only what is missing, with the same per-item seeds.
    """
    from tqdm.auto import tqdm

    items = list(items)
    check_items(items, str(output_file))
    store = ResumableJsonl(output_file)
    todo = [item for item in items if item["id"] not in store]
    _check_same_generator(store, items, model, params, output_file)
    if len(items) - len(todo):
        logger.info("%s: %d of %d items already done", output_file, len(items) - len(todo), len(items))
    backend = resolve_backend(gen_args)
    meta = {"model": model, "backend": backend, "params": asdict(params)}
    if todo:
        run = BACKENDS.get(backend)
        if run is None:
            raise ValueError(f"unknown generation backend '{backend}' (expected auto, {', '.join(BACKENDS)})")
        results = run(model, todo, _with_template_stops(params, gen_args), gen_args, progress)
        bar = tqdm(total=len(todo), desc=f"generate ({backend})", disable=not progress)
        try:
            for item, completions in results:
                store.add({**item, "completions": [text.strip() for text in completions], "generator": meta})
                bar.update(1)
        finally:
            results.close()  # stops a launched server / abandons requests not started, even on an error
            bar.close()
    return [store.get(item["id"]) for item in items]


def _check_same_generator(store: ResumableJsonl, items: list[dict], model: str, params: SamplingParams,
                          output_file) -> None:
    """Resuming into a file written by another model or other sampling settings would mix two runs: refuse."""
    wanted = {"model": model, "params": asdict(params)}
    for item in items:
        row = store.get(item["id"])
        if row is None or "generator" not in row:
            continue
        done = {"model": row["generator"].get("model"), "params": row["generator"].get("params")}
        for key in ("model", "params"):
            if done[key] != wanted[key]:
                raise ValueError(f"{output_file}: item {item['id']!r} was generated with {key} {done[key]!r}, this "
                                 f"run asks for {wanted[key]!r}; use another output file or remove it to start over")
        return  # rows of one file come from one run: checking the first done item is enough


def resolve_backend(gen_args: GenerationArguments) -> str:
    if gen_args.backend != "auto":
        return gen_args.backend
    if gen_args.base_url or gen_args.server_ports:
        return "openai"
    from chatalign.servers import has_gpu, is_installed

    if is_installed("vllm") and has_gpu():
        return "vllm"
    return "transformers"


def _with_template_stops(params: SamplingParams, gen_args: GenerationArguments) -> SamplingParams:
    """gen_chat_template's stop strings when the params name none."""
    if not gen_args.gen_chat_template or params.stop:
        return params
    from chatalign.chat_templates import resolve_chat_template

    stops = resolve_chat_template(gen_args.gen_chat_template).stop_strings
    return SamplingParams(**{**asdict(params), "stop": list(stops)})


def _item_params(params: SamplingParams, item_id: Any) -> SamplingParams:
    return SamplingParams(**{**asdict(params), "seed": item_seed(params.seed, item_id)})


def _run_client(client: ChatClient, items: list[dict], params: SamplingParams):
    client.check_reachable()
    by_key = {str(item["id"]): item for item in items}
    requests = [(str(item["id"]), item_messages(item), _item_params(params, item["id"])) for item in items]
    try:
        for key, completions in client.iter_many(requests):
            yield by_key[key], completions
    finally:
        client.close()


def _run_openai(model, items, params, gen_args, progress):
    """Running endpoints; they render prompts with their own chat template."""
    if gen_args.gen_chat_template:
        logger.warning("gen_chat_template is not applied by a running server (it renders with its own template); "
                       "only its stop strings are used")
    yield from _run_client(client_from_args(gen_args, model), items, params)


def _run_server(model, items, params, gen_args, progress):
    """A server launched for `model` (and gen_chat_template) for this run only."""
    from chatalign.servers import serve

    with serve(model, gen_args, seed=params.seed) as endpoints:
        client = ChatClient(list(endpoints), endpoints.model, parallel=gen_args.gen_parallel,
                            timeout=gen_args.request_timeout, max_retries=gen_args.max_retries,
                            backoff=gen_args.retry_backoff, extra_body=endpoints.extra_body)
        yield from _run_client(client, items, params)


def _run_transformers(model_path, items, params, gen_args, progress):
    """In process, in batches of gen_batch_size; each chunk's rows are yielded (and so written) when it finishes."""
    import torch
    from transformers import AutoModelForCausalLM

    from chatalign.model_utils import load_tokenizer

    tokenizer = load_tokenizer(model_path, chat_template=gen_args.gen_chat_template, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path)
    if torch.cuda.is_available():
        model = model.to("cuda")
    chunk = max(gen_args.gen_batch_size, 1) * 4
    for start in range(0, len(items), chunk):
        batch = items[start:start + chunk]
        outputs = generate_local(model, tokenizer, [item_messages(item) for item in batch], params,
                                 batch_size=gen_args.gen_batch_size, progress=False,
                                 seeds=[item_seed(params.seed, item["id"]) for item in batch])
        yield from zip(batch, outputs, strict=True)


# --------------------------------------------------------------------------------------------------------------------
# vLLM offline


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise ImportError("backend 'vllm' needs vLLM (pip install vllm, Linux with a CUDA GPU); "
                          "use backend 'transformers' or 'server' without it") from None
    return vllm


def vllm_engine_kwargs(model_path: str, gen_args: GenerationArguments, seed: int = 0) -> dict:
    """Arguments of vllm.LLM for a checkpoint: tensor parallel over world_size GPUs."""
    return {"model": str(model_path), "tokenizer": str(model_path), "tensor_parallel_size": gen_args.world_size,
            "seed": seed}


def to_vllm_sampling_params(params: SamplingParams, seed: int, vllm_module=None):
    """Our SamplingParams as vllm.SamplingParams for one item (its own seed: reproducible per request)."""
    vllm = vllm_module or _import_vllm()
    return vllm.SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                               max_tokens=params.max_tokens, stop=list(params.stop) or None, seed=seed)


def _run_vllm(model_path, items, params, gen_args, progress, chunk_size: int = 512):
    """vLLM offline: prompts rendered and tokenized here (same template and no second bos as in process).

    Items go in chunks of `chunk_size` so finished rows reach the file while the rest run.
    """
    from chatalign.model_utils import load_tokenizer

    vllm = _import_vllm()
    tokenizer = load_tokenizer(model_path, chat_template=gen_args.gen_chat_template)
    llm = vllm.LLM(**vllm_engine_kwargs(model_path, gen_args, seed=params.seed))
    for start in range(0, len(items), chunk_size):
        batch = items[start:start + chunk_size]
        prompts = [{"prompt_token_ids": ids} for ids in _encode_prompts(tokenizer, [item_messages(i) for i in batch])]
        sampling = [to_vllm_sampling_params(params, item_seed(params.seed, item["id"]), vllm) for item in batch]
        outputs = llm.generate(prompts, sampling_params=sampling, use_tqdm=progress)
        for item, output in zip(batch, outputs, strict=True):
            yield item, [_truncate_at_stop(o.text, params.stop) for o in output.outputs]


BACKENDS: dict[str, Callable] = {
    "openai": _run_openai,
    "server": _run_server,
    "vllm": _run_vllm,
    "transformers": _run_transformers,
}
