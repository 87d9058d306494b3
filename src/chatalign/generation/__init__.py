"""Generation from a model path, written as it goes and resumable, through one of several backends.

`generate(model, items, params, gen_args, output_file)` (:mod:`chatalign.generation.generate`) is the one entry point:
items are conversations keyed by id; every finished item is appended to a JSONL file at once; a rerun skips ids
already there, so an interrupted run loses at most the items in flight. Backends (``gen_args.backend``):
  - "openai": running OpenAI-compatible endpoints (OpenAI, `vllm serve`, SGLang, `transformers serve`) through
    `ChatClient`: bounded parallelism, retries with backoff, round-robin over several endpoints.
  - "server": a local server launched for the model path (:mod:`chatalign.generation.servers`), used like "openai",
    then stopped.
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

Modules: :mod:`.params` (sampling parameters, per-item seeds, recipe keys, the item format), :mod:`.local` (in
process), :mod:`.client` (the OpenAI-compatible client), :mod:`.servers` (engine launch), :mod:`.generate` (the entry
point and its backends).
"""
