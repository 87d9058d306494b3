"""The OpenAI-compatible chat client: bounded parallelism, retries with backoff, round-robin over endpoints."""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlparse

from chatalign.generation.engines import LOOPBACK, TRANSFORMERS_SERVE_EXTRA_BODY
from chatalign.generation.params import (
    Completion,
    GenerationArguments,
    SamplingParams,
    sample_seed,
    truncate_at_stop,
)
from chatalign.generation.servers import parse_ports

logger = logging.getLogger(__name__)


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


def is_loopback(url: str) -> bool:
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
        self.served_models: set[str] = set()  # the model ids the endpoints said they answered with

    def __repr__(self) -> str:
        return f"ChatClient({self.base_urls!r}, model={self.model!r}, parallel={self.parallel})"

    # -- transport ----------------------------------------------------------------------------------------------

    def _client(self, url: str):
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                import openai

                kwargs = {}
                if is_loopback(url):
                    # A proxy from the environment must not intercept requests to a local server.
                    kwargs["http_client"] = openai.DefaultHttpxClient(trust_env=False)
                client = openai.OpenAI(base_url=url, api_key=self._api_key or "EMPTY", max_retries=0,
                                       timeout=self.timeout, **kwargs)
                self._clients[url] = client
            return client

    def _send(self, url: str, body: dict) -> list[str]:
        """One HTTP request; the choices' texts in index order. (Tests wrap this to watch traffic.)"""
        response = self._client(url).chat.completions.create(**body)
        if getattr(response, "model", None):
            with self._lock:
                self.served_models.add(response.model)
        choices = sorted(response.choices, key=lambda choice: choice.index)
        if not body.get("logprobs"):
            return [choice.message.content or "" for choice in choices]
        return [Completion.of(choice.message.content or "", _token_logprobs(choice)) for choice in choices]

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
        if params.top_logprobs:
            body["logprobs"], body["top_logprobs"] = True, params.top_logprobs
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
                return [Completion.of(truncate_at_stop(text, params.stop), text.logprobs)
                        if isinstance(text, Completion) else truncate_at_stop(text, params.stop) for text in texts]
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
                with httpx.Client(timeout=timeout, trust_env=not is_loopback(url)) as client:
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


def _token_logprobs(choice) -> list[tuple[str, dict[str, float]]] | None:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if content is None:
        return None
    return [(t.token, {alt.token: alt.logprob for alt in (t.top_logprobs or [])} or {t.token: t.logprob})
            for t in content]


def endpoint_urls(gen_args: GenerationArguments) -> list[str]:
    """base_url (comma-separated for several) and http://127.0.0.1:<port>/v1 for every port in server_ports."""
    urls = [url.strip() for url in (gen_args.base_url or "").split(",") if url.strip()]
    urls += [f"http://{LOOPBACK}:{port}/v1" for port in parse_ports(gen_args.server_ports)]
    return urls


def client_from_args(gen_args: GenerationArguments, model: str) -> ChatClient:
    """A ChatClient for gen_args' endpoints; the model name sent is served_model_name or `model`.

    With engine=transformers the endpoints are taken to be `transformers serve`, whose requests need an extra field
    to sample at all (see chatalign.generation.servers.TRANSFORMERS_SERVE_EXTRA_BODY); other servers must not get it
    (OpenAI rejects unknown fields).
    """
    urls = endpoint_urls(gen_args)
    if not urls:
        raise ValueError("the openai backend needs base_url or server_ports")
    api_key = os.environ.get(gen_args.api_key_env) if gen_args.api_key_env else None
    if not api_key and any(not is_loopback(url) for url in urls):
        logger.warning("no API key in $%s for %s", gen_args.api_key_env, ", ".join(urls))
    extra_body = None
    if gen_args.engine == "transformers":
        extra_body = TRANSFORMERS_SERVE_EXTRA_BODY  # the running server is transformers serve: turn sampling on
    return ChatClient(urls, gen_args.served_model_name or model, api_key=api_key, parallel=gen_args.gen_parallel,
                      timeout=gen_args.request_timeout, max_retries=gen_args.max_retries,
                      backoff=gen_args.retry_backoff, extra_body=extra_body)
