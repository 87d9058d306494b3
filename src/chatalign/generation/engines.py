"""The inference engines a local server can run: vLLM, SGLang, `transformers serve`.

Each launch command is built by a pure function (`vllm_command`, `sglang_command`, `transformers_serve_command`) so the
exact arguments are testable without the engine; `select_engine` picks one (vLLM where installed with a GPU, else
SGLang likewise, else `transformers serve`). Chat template: with ``gen_args.gen_chat_template`` set, vLLM gets
``--chat-template <file>`` and SGLang ``--chat-template <file>`` (an SGLang JSON template is passed as is, anything
else as a .jinja file). ``transformers serve`` has no template flag and always renders with the tokenizer's own
template, so it is given a shadow checkpoint (`checkpoint_with_chat_template`). Starting and stopping the servers is
:mod:`chatalign.generation.servers`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from chatalign.data.templates import resolve_chat_template, strip_generation_tags

LOOPBACK = "127.0.0.1"


ENGINES = ("vllm", "sglang", "transformers")


# Files that carry a tokenizer's chat template; a shadow checkpoint replaces them (see checkpoint_with_chat_template).
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json", "additional_chat_templates")


# --------------------------------------------------------------------------------------------------------------------
# Launch commands (pure functions)


def vllm_command(model_path: str, port: int, served_model_name: str | None = None, tensor_parallel_size: int = 1,
                 seed: int = 0, chat_template_file: str | None = None, host: str = LOOPBACK,
                 extra_args: Sequence[str] = ()) -> list[str]:
    """`vllm serve` for one checkpoint. vLLM's own per-request `seed` makes sampling reproducible per request."""
    command = ["vllm", "serve", str(model_path),
               "--served-model-name", served_model_name or str(model_path),
               "--host", host, "--port", str(port),
               "--tensor-parallel-size", str(tensor_parallel_size),
               "--seed", str(seed)]
    if chat_template_file:
        command += ["--chat-template", str(chat_template_file)]
    return command + list(extra_args)


def sglang_command(model_path: str, port: int, served_model_name: str | None = None, tp_size: int = 1, seed: int = 0,
                   chat_template: str | None = None, host: str = LOOPBACK, python: str | None = None,
                   extra_args: Sequence[str] = ()) -> list[str]:
    """SGLang's `launch_server`; `chat_template` is a built-in name, an SGLang JSON file or a .jinja file."""
    command = [python or sys.executable, "-m", "sglang.launch_server",
               "--model-path", str(model_path),
               "--served-model-name", served_model_name or str(model_path),
               "--host", host, "--port", str(port),
               "--tp-size", str(tp_size),
               "--random-seed", str(seed)]
    if chat_template:
        command += ["--chat-template", str(chat_template)]
    return command + list(extra_args)


def transformers_serve_command(model_path: str, port: int, host: str = LOOPBACK, device: str = "auto",
                               dtype: str = "auto", seed: int | None = None, continuous_batching: bool = False,
                               log_level: str = "info", python: str | None = None,
                               extra_args: Sequence[str] = ()) -> list[str]:
    """`transformers serve <model>`, the model preloaded (FORCE_MODEL): requests must name it (or no model).

    Run as ``python -m transformers.cli.transformers`` so it is the interpreter's own transformers, not whatever
    `transformers` is first on PATH. Continuous batching stays off by default: in transformers 5.24 it applies the
    first request's generation config to every later request (temperature, max_tokens), see its
    `init_cb` TODO. `--default-seed` only seeds the process; per-request `seed` reseeds torch before each request.
    """
    command = [python or sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_path),
               "--host", host, "--port", str(port),
               "--device", device, "--dtype", dtype,
               "--log-level", log_level]
    if seed is not None:
        command += ["--default-seed", str(seed)]
    command.append("--continuous-batching" if continuous_batching else "--no-continuous-batching")
    return command + list(extra_args)


# --------------------------------------------------------------------------------------------------------------------
# Engine choice


def is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def select_engine(requested: str = "auto", gpu: bool | None = None, installed: dict[str, bool] | None = None) -> str:
    """vLLM where installed with a GPU, else SGLang where installed with a GPU, else `transformers serve`."""
    if requested != "auto":
        if requested not in ENGINES:
            raise ValueError(f"unknown server engine '{requested}' (expected auto, {', '.join(ENGINES)})")
        return requested
    gpu = has_gpu() if gpu is None else gpu
    if installed is None:
        installed = {"vllm": is_installed("vllm"), "sglang": is_installed("sglang")}
    if gpu and installed.get("vllm"):
        return "vllm"
    if gpu and installed.get("sglang"):
        return "sglang"
    return "transformers"


# transformers serve (5.24) only turns sampling off per request (temperature 0), never on: without do_sample in the
# checkpoint's generation_config.json it answers every request greedily. A request's "generation_config" replaces
# the checkpoint's (unset fields still fall back to it), so this turns sampling on; top_k 0 drops transformers'
# default top-k of 50, which OpenAI-style sampling does not have. temperature/top_p/seed still come per request.
TRANSFORMERS_SERVE_EXTRA_BODY = {"generation_config": json.dumps({"do_sample": True, "top_k": 0})}


# --------------------------------------------------------------------------------------------------------------------
# Chat templates for the engines


def checkpoint_with_chat_template(model_path: str | Path, template: str, out_dir: str | Path) -> Path:
    """A shadow of the checkpoint folder `model_path` whose tokenizer carries `template`.

    Every file is a symlink to the original except the chat template files: `chat_template.jinja` holds `template`
    and `tokenizer_config.json` is a copy without its `chat_template` key. Used for `transformers serve`, which has
    no chat-template flag.
    """
    model_path, out_dir = Path(model_path), Path(out_dir)
    if not model_path.is_dir():
        raise ValueError(f"gen_chat_template with transformers serve needs a local checkpoint folder; "
                         f"'{model_path}' is not one (download it first, or use vLLM/SGLang)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for entry in model_path.iterdir():
        if entry.name not in _TEMPLATE_FILES:
            (out_dir / entry.name).symlink_to(entry.resolve())
    config_path = model_path / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config.pop("chat_template", None)
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False),
                                                       encoding="utf-8")
    (out_dir / "chat_template.jinja").write_text(template, encoding="utf-8")
    return out_dir


def template_argument(spec: str, work_dir: Path, engine: str) -> str:
    """The file to hand an engine's --chat-template: SGLang reads its own JSON format; everything else gets jinja."""
    chat_template = resolve_chat_template(spec)
    if engine == "sglang" and chat_template.path is not None and chat_template.path.suffix == ".json" \
            and "chat_template" not in json.loads(chat_template.path.read_text(encoding="utf-8")):
        return str(chat_template.path)
    path = work_dir / "chat_template.jinja"
    # Same rendering without {% generation %}, which only transformers' own jinja environment knows.
    path.write_text(strip_generation_tags(chat_template.template), encoding="utf-8")
    return str(path)
