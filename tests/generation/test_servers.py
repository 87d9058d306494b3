"""chatalign.generation.engines and .servers: the launch command of each engine, launched servers that fail, and
servers whose workers outlive them."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from chatalign.data.templates import resolve_chat_template, strip_generation_tags
from chatalign.generation.engines import (
    checkpoint_with_chat_template,
    select_engine,
    sglang_command,
    transformers_serve_command,
    vllm_command,
)
from chatalign.generation.params import GenerationArguments
from chatalign.generation.servers import LocalServer, ServerStartError, build_servers, free_port, serve


def test_vllm_command():
    assert vllm_command("/ckpt/sft", 60001, "sft", tensor_parallel_size=4, seed=3,
                        chat_template_file="/tmp/t.jinja") == [
        "vllm", "serve", "/ckpt/sft", "--served-model-name", "sft", "--host", "127.0.0.1", "--port", "60001",
        "--tensor-parallel-size", "4", "--seed", "3", "--chat-template", "/tmp/t.jinja"]
    assert vllm_command("/ckpt/sft", 8000) == [
        "vllm", "serve", "/ckpt/sft", "--served-model-name", "/ckpt/sft", "--host", "127.0.0.1", "--port", "8000",
        "--tensor-parallel-size", "1", "--seed", "0"]


def test_sglang_command():
    assert sglang_command("/ckpt/sft", 30000, "sft", tp_size=2, seed=1, chat_template="chatml.json",
                          python="python") == [
        "python", "-m", "sglang.launch_server", "--model-path", "/ckpt/sft", "--served-model-name", "sft",
        "--host", "127.0.0.1", "--port", "30000", "--tp-size", "2", "--random-seed", "1",
        "--chat-template", "chatml.json"]


def test_transformers_serve_command():
    assert transformers_serve_command("/ckpt/sft", 8001, seed=5, python="python") == [
        "python", "-m", "transformers.cli.transformers", "serve", "/ckpt/sft", "--host", "127.0.0.1", "--port", "8001",
        "--device", "auto", "--dtype", "auto", "--log-level", "info", "--default-seed", "5",
        "--no-continuous-batching"]
    built = transformers_serve_command("/m", 1, device="cuda:0", continuous_batching=True, extra_args=["--compile"])
    assert built[-2:] == ["--continuous-batching", "--compile"] and built[built.index("--device") + 1] == "cuda:0"


@pytest.mark.parametrize("gpu, vllm, sglang, expected", [
    (True, True, True, "vllm"),
    (True, False, True, "sglang"),
    (True, False, False, "transformers"),
    (False, True, True, "transformers"),
])
def test_engine_order(gpu, vllm, sglang, expected):
    assert select_engine("auto", gpu=gpu, installed={"vllm": vllm, "sglang": sglang}) == expected
    assert select_engine("sglang", gpu=False, installed={}) == "sglang"
    with pytest.raises(ValueError, match="unknown server engine 'tgi'"):
        select_engine("tgi")


def test_launch_commands_carry_the_chat_template(tmp_path, tiny_model_dir, repo_root):
    args = GenerationArguments(world_size=2, gen_chat_template="chatml", served_model_name="tiny",
                               server_extra_args="--max-model-len 2048")
    (tmp_path / "v").mkdir()
    vllm_servers, name = build_servers("/ckpt", args, "vllm", [7001], tmp_path / "v", seed=4)
    command = vllm_servers[0].command
    assert name == "tiny"
    template_file = Path(command[command.index("--chat-template") + 1])
    assert template_file.read_text() == strip_generation_tags(resolve_chat_template("chatml").template)
    assert command[:3] == ["vllm", "serve", "/ckpt"] and command[-2:] == ["--max-model-len", "2048"]
    assert command[command.index("--tensor-parallel-size") + 1] == "2" and command[command.index("--seed") + 1] == "4"

    (tmp_path / "s").mkdir()
    args.gen_chat_template = str(repo_root / "chat_templates" / "chatml.json")
    sglang_servers, _ = build_servers("/ckpt", args, "sglang", [7002], tmp_path / "s")
    command = sglang_servers[0].command
    assert command[command.index("--chat-template") + 1] == args.gen_chat_template  # SGLang reads its JSON itself
    assert command[command.index("--tp-size") + 1] == "2"

    (tmp_path / "t").mkdir()
    args.gen_chat_template = "zephyr"
    hf_servers, name = build_servers(str(tiny_model_dir), args, "transformers", [7003], tmp_path / "t")
    shadow = Path(hf_servers[0].command[4])
    assert name == str(shadow) and shadow.parent == tmp_path / "t"
    assert (shadow / "chat_template.jinja").read_text() == resolve_chat_template("zephyr").template


def test_checkpoint_with_chat_template(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    template = resolve_chat_template("llama-3").template
    shadow = checkpoint_with_chat_template(tiny_model_dir, template, tmp_path / "shadow")
    assert (shadow / "model.safetensors").is_symlink()
    assert not (shadow / "tokenizer_config.json").is_symlink()
    assert AutoTokenizer.from_pretrained(shadow).chat_template == template
    assert AutoTokenizer.from_pretrained(tiny_model_dir).chat_template != template  # the original is untouched


def test_a_server_that_exits_fails_fast_with_its_log(tmp_path):
    script = "import sys; print('loading weights...'); print('CUDA out of memory', flush=True); sys.exit(3)"
    server = LocalServer([sys.executable, "-c", script], free_port(), tmp_path / "s.log", name="fake server")
    server.start()
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="exited with code 3") as caught:
        server.wait_ready(timeout=30)
    assert time.monotonic() - started < 10
    assert "CUDA out of memory" in str(caught.value) and str(tmp_path / "s.log") in str(caught.value)


def test_a_server_that_never_gets_healthy_times_out_and_is_stopped(tmp_path):
    script = "import time; print('still compiling kernels', flush=True); time.sleep(60)"
    server = LocalServer([sys.executable, "-c", script], free_port(), tmp_path / "s.log", name="fake server")
    server.start()
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="health check") as caught:
        server.wait_ready(timeout=1.5)
    assert time.monotonic() - started < 1.5 + 5
    assert "still compiling kernels" in str(caught.value)
    assert not server.is_running()


def test_serve_refuses_a_busy_port(tiny_model_dir):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        args = GenerationArguments(engine="transformers", server_ports=[port])
        with pytest.raises(ServerStartError, match=f"port\\(s\\) \\[{port}\\]"):
            with serve(str(tiny_model_dir), args):
                pass


def process_alive(pid: int) -> bool:
    """Running (a zombie left unreaped by this container's init counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_ends_the_workers_of_a_server_whose_main_process_already_died(tmp_path):
    # The "server" starts two long-lived workers into its group and exits at once, as a crashed vLLM leader would.
    # Popen returns only once each worker has exec'd (bash's `sleep &` does not wait for that, and flaked in CI).
    leader = ("import subprocess, sys\n"
              "workers = [subprocess.Popen(['sleep', '300']) for _ in range(2)]\n"
              "print('workers', *(w.pid for w in workers), flush=True)\n"
              "sys.exit(3)")
    server = LocalServer([sys.executable, "-c", leader], free_port(), tmp_path / "server.log")
    server.start()
    assert server.process.wait(timeout=30) == 3, (tmp_path / "server.log").read_text()
    printed = [line for line in (tmp_path / "server.log").read_text().splitlines() if line.startswith("workers ")]
    started = [int(pid) for pid in printed[-1].split()[1:]]
    workers = server.members()
    assert sorted(workers) == sorted(started) and all(process_alive(pid) for pid in workers)
    other = LocalServer(["sleep", "300"], free_port(), tmp_path / "other.log")  # another server's process
    other.start()
    server.stop(grace=1)
    deadline = time.monotonic() + 10
    while any(process_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_alive(pid) for pid in workers)
    assert other.is_running() and other.members() == [other.process.pid]  # only this server's mark was hit
    other.stop(grace=1)
    assert not other.is_running()
