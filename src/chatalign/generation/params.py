"""What every way of generating shares: sampling parameters, per-item seeds, the recipe keys, the item format."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

SEED_MASK = 0x7FFFFFFF  # seeds stay in [0, 2**31): every engine accepts them


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int = 0
    top_logprobs: int = 0  # > 0: ask for this many alternatives per token (Completion.logprobs)


class Completion(str):
    """A completion's text that also carries the server's per-token logprobs, [(token, {alternative: logprob})],
    where they were asked for (SamplingParams.top_logprobs): a str, so every caller of texts keeps working."""

    logprobs: list[tuple[str, dict[str, float]]] | None = None

    @classmethod
    def of(cls, text: str, logprobs) -> Completion:
        completion = cls(text)
        completion.logprobs = logprobs
        return completion


def item_seed(seed: int, item_id: Any) -> int:
    """The seed of one item: a hash of the run's seed and the item id (as text, like ResumableJsonl keys)."""
    digest = hashlib.sha256(f"{seed}\x00{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & SEED_MASK


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of an item whose seed is `seed` (sample 0 uses the item seed itself)."""
    return (seed + index) & SEED_MASK


def truncate_at_stop(text: str, stop: list[str]) -> str:
    cut = len(text)
    for s in stop:
        pos = text.find(s)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut]


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
