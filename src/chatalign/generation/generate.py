"""`generate()`: the one entry point of every script that generates, and the backends it dispatches to."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from chatalign.data.templates import resolve_chat_template
from chatalign.data.tokenizers import load_tokenizer
from chatalign.generation.client import ChatClient, client_from_args
from chatalign.generation.engines import has_gpu, is_installed
from chatalign.generation.local import encode_prompts, generate_local
from chatalign.generation.params import (
    GenerationArguments,
    SamplingParams,
    check_items,
    item_messages,
    item_seed,
    truncate_at_stop,
)
from chatalign.generation.servers import serve
from chatalign.store import ResumableJsonl

logger = logging.getLogger(__name__)


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
    meta = {"model": model, "backend": backend, "params": params_record(params)}
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
    wanted = {"model": model, "params": params_record(params)}
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


def params_record(params: SamplingParams) -> dict:
    """The sampling settings a generation file records (top_logprobs only where asked for: files written before it
    existed stay resumable)."""
    record = asdict(params)
    if not record.get("top_logprobs"):
        record.pop("top_logprobs", None)
    return record


def resolve_backend(gen_args: GenerationArguments) -> str:
    if gen_args.backend != "auto":
        return gen_args.backend
    if gen_args.base_url or gen_args.server_ports:
        return "openai"
    if is_installed("vllm") and has_gpu():
        return "vllm"
    return "transformers"


def _with_template_stops(params: SamplingParams, gen_args: GenerationArguments) -> SamplingParams:
    """gen_chat_template's stop strings when the params name none."""
    if not gen_args.gen_chat_template or params.stop:
        return params
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
    with serve(model, gen_args, seed=params.seed) as endpoints:
        client = ChatClient(list(endpoints), endpoints.model, parallel=gen_args.gen_parallel,
                            timeout=gen_args.request_timeout, max_retries=gen_args.max_retries,
                            backoff=gen_args.retry_backoff, extra_body=endpoints.extra_body)
        yield from _run_client(client, items, params)


_LOADED: dict[tuple, tuple] = {}  # the last checkpoint loaded in process: one script's calls share it


def _load_in_process(model_path: str, chat_template: str | None):
    """(tokenizer, model), reused while the same checkpoint is asked for (e.g. MT-Bench's call per turn and
    temperature); loading another replaces it."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(model_path)
    stamp = tuple(p.stat().st_mtime_ns for p in sorted(folder.glob("*.safetensors"))) if folder.is_dir() else ()
    key = (str(model_path), chat_template, stamp)  # a checkpoint rewritten in place is loaded again
    if key not in _LOADED:
        _LOADED.clear()
        tokenizer = load_tokenizer(model_path, chat_template=chat_template, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(model_path)
        _LOADED[key] = (tokenizer, model.to("cuda") if torch.cuda.is_available() else model)
    return _LOADED[key]


def _run_transformers(model_path, items, params, gen_args, progress):
    """In process, in batches of gen_batch_size; each chunk's rows are yielded (and so written) when it finishes."""
    tokenizer, model = _load_in_process(model_path, gen_args.gen_chat_template)
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
    vllm = _import_vllm()
    tokenizer = load_tokenizer(model_path, chat_template=gen_args.gen_chat_template)
    llm = vllm.LLM(**vllm_engine_kwargs(model_path, gen_args, seed=params.seed))
    for start in range(0, len(items), chunk_size):
        batch = items[start:start + chunk_size]
        prompts = [{"prompt_token_ids": ids} for ids in encode_prompts(tokenizer, [item_messages(i) for i in batch])]
        sampling = [to_vllm_sampling_params(params, item_seed(params.seed, item["id"]), vllm) for item in batch]
        outputs = llm.generate(prompts, sampling_params=sampling, use_tqdm=progress)
        for item, output in zip(batch, outputs, strict=True):
            yield item, [truncate_at_stop(o.text, params.stop) for o in output.outputs]


BACKENDS: dict[str, Callable] = {
    "openai": _run_openai,
    "server": _run_server,
    "vllm": _run_vllm,
    "transformers": _run_transformers,
}
