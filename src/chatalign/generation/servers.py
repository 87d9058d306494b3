"""Local OpenAI-compatible servers for a checkpoint: start, health check, shutdown, one per port.

`serve(model_path, gen_args)` launches one server per port (``gen_args.server_ports``, or one free port), waits until
each answers its health check and yields their base URLs; on exit every server is stopped (SIGTERM to its process
group, SIGKILL after a grace period, then SIGKILL to any process still carrying the server's mark). The engine and its
launch command come from :mod:`chatalign.generation.engines`: vLLM where it is installed and a GPU is present, else
SGLang under the same conditions, else ``transformers serve`` (CPU works); ``gen_args.engine`` picks one explicitly.
Servers listen on 127.0.0.1 only. Their output goes to a log file; when a server does not come up, the error carries
the tail of that log. Stop strings are not a server setting in any engine: the client sends them with every request
(see chatalign.generation.client).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

from chatalign.data.templates import resolve_chat_template
from chatalign.generation.engines import (
    LOOPBACK,
    TRANSFORMERS_SERVE_EXTRA_BODY,
    checkpoint_with_chat_template,
    has_gpu,
    is_installed,
    select_engine,
    sglang_command,
    template_argument,
    transformers_serve_command,
    vllm_command,
)

logger = logging.getLogger(__name__)

SERVER_TOKEN_ENV = "CHATALIGN_SERVER_TOKEN"


class ServerStartError(RuntimeError):
    """A launched server exited or did not pass its health check in time; the message ends with its log's tail."""


# --------------------------------------------------------------------------------------------------------------------
# Launch commands (pure functions)








# --------------------------------------------------------------------------------------------------------------------
# Engine choice and ports








def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now (the OS picks it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct free ports (all held open while picking, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def parse_ports(value) -> list[int]:
    """`[60001, 60002]`, `["60001,60002"]` or `"60001,60002"` -> [60001, 60002]."""
    if value is None:
        return []
    parts = value if isinstance(value, (list, tuple)) else [value]
    ports = []
    for part in parts:
        for piece in str(part).split(","):
            piece = piece.strip()
            if piece:
                ports.append(int(piece))
    return ports


# --------------------------------------------------------------------------------------------------------------------
# One server process


class LocalServer:
    """A server process started from `command`, its output in `log_path`, healthy when GET `health_url` is 200."""

    def __init__(self, command: list[str], port: int, log_path: str | Path, env: dict[str, str] | None = None,
                 host: str = LOOPBACK, health_path: str = "/health", name: str = "server"):
        self.command = list(command)
        self.port = port
        self.host = host
        self.log_path = Path(log_path)
        self.env = env
        self.name = name
        self.health_url = f"http://{host}:{port}{health_path}"
        self.process: subprocess.Popen | None = None
        # Every process of this server (the engine's workers too) inherits this mark in its environment, so stop()
        # finds them even when the process that started them is gone and its group id may be another's.
        self.token = uuid.uuid4().hex

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> None:
        if self.is_running():
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {shlex.join(self.command)}\n".encode())
            log.flush()
            # A new session makes the server the leader of its own process group, so stop() also reaches the
            # workers vLLM and SGLang fork, and a Ctrl-C in the terminal is not delivered to it twice.
            env = {**(self.env if self.env is not None else os.environ), SERVER_TOKEN_ENV: self.token}
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        logger.info("%s: started %s (pid %d, log %s)", self.name, self.url, self.process.pid, self.log_path)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(self, timeout: float, poll: float = 0.25) -> None:
        """Return once the health check passes; raise ServerStartError if the process exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise ServerStartError(f"{self.name} for {self.url} exited with code {self.process.returncode} "
                                       f"before it was ready.\n{self._log_excerpt()}")
            if self.healthy(timeout=max(min(2.0, deadline - time.monotonic()), 0.1)):
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise ServerStartError(f"{self.name} for {self.url} did not pass its health check "
                                       f"({self.health_url}) within {timeout:g} s.\n{self._log_excerpt()}")
            time.sleep(poll)

    def log_tail(self, max_chars: int = 4000) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(size - max_chars, 0))
                return handle.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _log_excerpt(self) -> str:
        return f"Last lines of {self.log_path}:\n{self.log_tail()}"

    def _signal_group(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def members(self) -> list[int]:
        """Live processes carrying this server's mark (Linux /proc; none found elsewhere)."""
        mark = f"{SERVER_TOKEN_ENV}={self.token}".encode()
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
        return found

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after `grace` seconds, then SIGKILL to every process that
        still carries the server's mark: workers that outlived the leader, also when the leader died before stop().

        The group is only signalled while its leader is still ours (not yet reaped): once reaped, its id may be reused.
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout=grace)
        for pid in self.members():  # vLLM and SGLang workers whose leader is gone
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL to the server's process group at once, as a crash would."""
        if self.process is None or self.process.poll() is not None:
            return
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def restart(self, timeout: float) -> None:
        self.stop()
        self.start()
        self.wait_ready(timeout)




class ServedEndpoints(list):
    """The base URLs of launched servers (a list of str), plus `model` (the name to send), the engine's
    `extra_body` (request fields it needs, or None) and the servers."""

    def __init__(self, urls: list[str], model: str, engine: str, servers: list[LocalServer], work_dir: Path):
        super().__init__(urls)
        self.model = model
        self.engine = engine
        self.servers = servers
        self.work_dir = work_dir
        self.extra_body = dict(TRANSFORMERS_SERVE_EXTRA_BODY) if engine == "transformers" else None


# --------------------------------------------------------------------------------------------------------------------
# Chat templates for the engines






# --------------------------------------------------------------------------------------------------------------------
# serve()


def _gpu_groups(n_servers: int, per_server: int) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES for each server when several share a machine, or None (one server or no GPU)."""
    if n_servers <= 1 or not has_gpu():
        return None
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(torch.cuda.device_count())]
    needed = n_servers * per_server
    if len(devices) < needed:
        raise ValueError(f"{n_servers} servers x world_size {per_server} need {needed} GPUs; {len(devices)} visible")
    return [",".join(devices[i * per_server:(i + 1) * per_server]) for i in range(n_servers)]


def build_servers(model_path: str, gen_args, engine: str, ports: list[int], work_dir: Path,
                  seed: int = 0) -> tuple[list[LocalServer], str]:
    """The servers `serve` would start (not started yet) and the model name requests must carry."""
    extra = shlex.split(gen_args.server_extra_args) if getattr(gen_args, "server_extra_args", None) else []
    template_spec = gen_args.gen_chat_template
    served_name = gen_args.served_model_name or str(model_path)
    log_dir = Path(gen_args.server_log_dir) if getattr(gen_args, "server_log_dir", None) else work_dir
    groups = _gpu_groups(len(ports), gen_args.world_size if engine != "transformers" else 1)
    base_env = dict(os.environ)
    base_env.setdefault("PYTHONUNBUFFERED", "1")
    base_env.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")  # the transformers CLI otherwise asks PyPI
    served_path = str(model_path)
    if engine == "transformers":
        if template_spec:
            served_path = str(checkpoint_with_chat_template(model_path, resolve_chat_template(template_spec).template,
                                                            work_dir / "checkpoint"))
        # transformers serve names its model by the path it loaded; served_model_name cannot rename it.
        served_name = served_path
    template_arg = template_argument(template_spec, work_dir, engine) if template_spec and engine != "transformers" \
        else None
    servers = []
    for index, port in enumerate(ports):
        if engine == "vllm":
            command = vllm_command(model_path, port, served_name, gen_args.world_size, seed, template_arg,
                                   extra_args=extra)
        elif engine == "sglang":
            command = sglang_command(model_path, port, served_name, gen_args.world_size, seed, template_arg,
                                     extra_args=extra)
        else:
            command = transformers_serve_command(served_path, port, seed=seed, extra_args=extra)
        env = dict(base_env)
        if groups is not None:
            env["CUDA_VISIBLE_DEVICES"] = groups[index]
        servers.append(LocalServer(command, port, log_dir / f"{engine}-server-{port}.log", env=env,
                                   name=f"{engine} server"))
    return servers, served_name


@contextlib.contextmanager
def serve(model_path: str | Path, gen_args, seed: int = 0) -> Iterator[ServedEndpoints]:
    """Launch a server per port for `model_path`, yield their base URLs once all are healthy, stop them on exit.

    Ports: ``gen_args.server_ports`` (must be free) or one free port. Logs: ``gen_args.server_log_dir`` if set,
    else a temporary folder that is removed after a clean shutdown and kept (and named in the error) otherwise.
    """
    engine = select_engine(gen_args.engine)
    if engine in ("vllm", "sglang") and not is_installed(engine):
        raise ValueError(f"server engine '{engine}' is not installed (pip install {engine})")
    ports = parse_ports(gen_args.server_ports) or [free_port()]
    busy = [port for port in ports if not port_is_free(port)]
    if busy:
        raise ServerStartError(f"cannot launch a server on port(s) {busy}: already in use on {LOOPBACK} "
                               "(to use running servers instead, set backend=openai)")
    work_dir = Path(tempfile.mkdtemp(prefix="chatalign-serve-"))
    servers, served_name = build_servers(str(model_path), gen_args, engine, ports, work_dir, seed=seed)
    clean = False
    try:
        for server in servers:
            server.start()
        deadline = time.monotonic() + gen_args.server_start_timeout
        for server in servers:  # started together, so they load in parallel; waited on in turn
            server.wait_ready(max(deadline - time.monotonic(), 0.0))
        logger.info("%s serving %s at %s", engine, model_path, ", ".join(s.url for s in servers))
        yield ServedEndpoints([s.url for s in servers], served_name, engine, servers, work_dir)
        clean = True
    finally:
        for server in servers:
            server.stop()
        if clean and not getattr(gen_args, "server_log_dir", None):
            shutil.rmtree(work_dir, ignore_errors=True)
        elif not clean:
            logger.warning("server logs kept in %s", work_dir)
