"""Build (and run) the `accelerate launch` command of a recipe, on one machine or on every node of a Slurm job.

recipes/launch.slurm is a thin shell wrapper around this module, so the logic lives here and is tested in Python:

    python -m chatalign.launch build-command MODEL TASK PRECISION ACCELERATOR [--overrides='--key=value ...']
        [--num_nodes N] [--gpus_per_node G] [--node_rank R] [--main_address HOST] [--main_port PORT] [--repo_root DIR]
    python -m chatalign.launch run ...same arguments...      # exec it (under srun on every node when N > 1)
    python -m chatalign.launch recipe-value RECIPE KEY [--overrides='...']

MODEL/TASK/PRECISION/ACCELERATOR name the files, as alignment-handbook's launch.slurm does:
recipes/{MODEL}/{TASK}/config_{PRECISION}.yaml, recipes/accelerate_configs/{ACCELERATOR}.yaml, scripts/run_{TASK}.py.
Paths in the command are relative to the repo root (--repo_root, else $CHATALIGN_REPO_ROOT, else this checkout, else
the current directory); `run` executes it from there.

Whatever is not given is derived from the environment: Slurm's variables inside a job (SLURM_NNODES, SLURM_PROCID,
SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE, the first host of SLURM_JOB_NODELIST through `scontrol show hostnames`),
and outside one a single node with the GPUs of CUDA_VISIBLE_DEVICES or `nvidia-smi -L` (1 when there are none).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import keyword
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MAIN_PORT = 29500
REPO_ROOT_ENV = "CHATALIGN_REPO_ROOT"
SRUN_OPTIONS = ("--ntasks-per-node=1", "--kill-on-bad-exit=1", "--wait=60")


class LaunchError(ValueError):
    """A launch that cannot work (missing file, bad recipe value, impossible topology), reported before starting."""


# --------------------------------------------------------------------------------------------------------------------
# Recipe values, read through the project's parser


@dataclass
class LaunchValues:
    """The recipe keys the launcher uses, with the types and defaults of transformers' TrainingArguments."""

    gradient_accumulation_steps: int = 1
    per_device_train_batch_size: int = 8


def _override_keys(overrides: Sequence[str]) -> list[str]:
    keys = []
    for token in overrides:
        if token in ("-h", "--help", "--configs"):
            raise LaunchError(f"override '{token}' cannot be used through the launcher")
        if token.startswith("--"):
            keys.append(token[2:].partition("=")[0].replace("-", "_"))
    return keys


def read_recipe(recipe: str | Path, overrides: Sequence[str] = (), base: Path | None = None) -> dict[str, Any]:
    """Every key of `recipe` after `overrides`, resolved exactly as the training script's ChatalignParser resolves it.

    YAML files at the head of the overrides are further recipe files, as for the training script; relative ones are
    read from `base` (the directory the script will run in), else from the current directory.

    The launcher does not know the training script's dataclasses, so keys other than LaunchValues' are carried
    untyped (the script checks them); LaunchValues' keys get the script's type coercion and defaults. Parsing goes
    through ChatalignParser, so `--key=value`, `--key value`, `--key-name`, run_args.yaml recipes and its error
    messages all behave as in training.
    """
    from chatalign.configs import ChatalignParser, ConfigError, load_recipe_file

    overrides = list(overrides)
    files = [Path(recipe)]
    for i, token in enumerate(overrides):
        if not token.endswith((".yaml", ".yml")):
            break
        files.append(Path(base or ".", token))
        overrides[i] = str(files[-1])
    try:
        file_keys = [key for path in files for key in load_recipe_file(path)]
        typed = {f.name for f in dataclasses.fields(LaunchValues)}
        untyped = [k for k in dict.fromkeys(file_keys + _override_keys(overrides)) if k not in typed]
        for key in untyped:
            if not key.isidentifier() or keyword.iskeyword(key):
                raise LaunchError(f"recipe '{recipe}' (or its overrides) has a key that is no valid name: '{key}'")
        extras = dataclasses.make_dataclass(
            "RecipeExtras", [(key, object, field(default=None)) for key in untyped]
        )
        values, rest = ChatalignParser([LaunchValues, extras]).parse([str(recipe), *overrides])
    except ConfigError as err:
        raise LaunchError(str(err)) from None
    resolved = dataclasses.asdict(rest)
    resolved.update(dataclasses.asdict(values))
    return resolved


def recipe_value(recipe: str | Path, key: str, overrides: Sequence[str] = ()) -> Any:
    values = read_recipe(recipe, overrides)
    if key not in values:
        raise LaunchError(f"key '{key}' is not set in recipe '{recipe}' nor in its overrides")
    return values[key]


def format_value(value: Any) -> str:
    """Strings as they are, everything else as JSON (true/false/null, numbers, lists, mappings)."""
    return value if isinstance(value, str) else json.dumps(value)


# --------------------------------------------------------------------------------------------------------------------
# Topology: how many nodes and GPUs, which node this is, where the main process listens


@dataclass(frozen=True)
class Topology:
    num_nodes: int
    gpus_per_node: int
    node_rank: int
    main_address: str
    main_port: int

    @property
    def num_processes(self) -> int:
        return self.num_nodes * self.gpus_per_node


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise LaunchError(f"environment variable {name}={raw!r} is not an integer") from None


def _gpus_from_env(env: Mapping[str, str]) -> int | None:
    on_node = _env_int(env, "SLURM_GPUS_ON_NODE")
    if on_node:
        return on_node
    per_node = env.get("SLURM_GPUS_PER_NODE", "").strip()  # "8" or "h100:8"
    if per_node:
        count = per_node.rsplit(":", 1)[-1]
        if count.isdigit() and int(count) > 0:
            return int(count)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() not in ("", "-1", "NoDevFiles"):
        return len([d for d in visible.split(",") if d.strip()])
    return None


def _run_tool(env: Mapping[str, str], *argv: str) -> str | None:
    """stdout of a tool found on env's PATH, or None when it is missing or fails."""
    exe = shutil.which(argv[0], path=env.get("PATH"))
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=60, env=dict(env))
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _gpus_from_nvidia_smi(env: Mapping[str, str]) -> int | None:
    out = _run_tool(env, "nvidia-smi", "-L")
    count = sum(1 for line in (out or "").splitlines() if line.startswith("GPU "))
    return count or None


def _first_host(env: Mapping[str, str]) -> str | None:
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        return None
    out = _run_tool(env, "scontrol", "show", "hostnames", nodelist)
    hosts = (out or "").split()
    return hosts[0] if hosts else None


def detect_topology(
    env: Mapping[str, str] | None = None,
    num_nodes: int | None = None,
    gpus_per_node: int | None = None,
    node_rank: int | None = None,
    main_address: str | None = None,
    main_port: int | None = None,
) -> Topology:
    """Explicit values win; the rest come from Slurm's variables, then from this machine, then single-node defaults."""
    env = os.environ if env is None else env
    if num_nodes is None:
        num_nodes = _env_int(env, "SLURM_NNODES") or _env_int(env, "SLURM_JOB_NUM_NODES") or 1
    if gpus_per_node is None:
        gpus_per_node = _gpus_from_env(env) or _gpus_from_nvidia_smi(env) or 1
    if node_rank is None:
        # One launcher per node (srun --ntasks-per-node=1), so the task rank is the node rank.
        node_rank = _env_int(env, "SLURM_PROCID") or 0
    if main_address is None:
        main_address = _first_host(env)
        if main_address is None:
            if num_nodes > 1:
                raise LaunchError(
                    f"{num_nodes} nodes but no main address: give --main_address, or run inside a Slurm job where "
                    "`scontrol show hostnames $SLURM_JOB_NODELIST` works"
                )
            main_address = "127.0.0.1"
    if main_port is None:
        main_port = DEFAULT_MAIN_PORT
    if num_nodes < 1 or gpus_per_node < 1:
        raise LaunchError(f"need at least 1 node and 1 GPU per node, got {num_nodes} node(s) x {gpus_per_node} GPU(s)")
    if not 0 <= node_rank < num_nodes:
        raise LaunchError(f"node rank {node_rank} is outside 0..{num_nodes - 1} for {num_nodes} node(s)")
    if not 0 < main_port < 65536:
        raise LaunchError(f"main port {main_port} is not a TCP port")
    return Topology(num_nodes, gpus_per_node, node_rank, main_address, main_port)


# --------------------------------------------------------------------------------------------------------------------
# The command


def default_repo_root(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(REPO_ROOT_ENV):
        return Path(env[REPO_ROOT_ENV])
    checkout = Path(__file__).resolve().parents[2]  # src/chatalign/launch.py -> the checkout
    if (checkout / "recipes").is_dir():
        return checkout
    return Path.cwd()


def _available(folder: Path, pattern: str, strip_prefix: str = "", strip_suffix: str = "") -> str:
    names = sorted(p.name for p in folder.glob(pattern)) if folder.is_dir() else []
    names = [n.removeprefix(strip_prefix).removesuffix(strip_suffix) for n in names]
    return ", ".join(names) or "none"


def resolve_files(repo_root: Path, model: str, task: str, precision: str, accelerator: str) -> tuple[str, str, str]:
    """(recipe, accelerate config, training script), relative to repo_root, or a LaunchError naming what is there."""
    recipe = f"recipes/{model}/{task}/config_{precision}.yaml"
    accelerate_config = f"recipes/accelerate_configs/{accelerator}.yaml"
    script = f"scripts/run_{task}.py"
    if not (repo_root / recipe).is_file():
        if not (repo_root / "recipes" / model).is_dir():
            models = sorted(
                p.name for p in (repo_root / "recipes").glob("*/") if p.is_dir() and p.name != "accelerate_configs"
            )
            hint = f"no recipes for model '{model}' (models: {', '.join(models) or 'none'})"
        else:
            hint = f"{model}/{task} has: " + _available(repo_root / "recipes" / model / task, "config_*.yaml",
                                                       "config_", ".yaml")
        raise LaunchError(f"recipe '{recipe}' not found under {repo_root}: {hint}")
    if not (repo_root / accelerate_config).is_file():
        raise LaunchError(
            f"accelerate config '{accelerate_config}' not found under {repo_root}; accelerators: "
            + _available(repo_root / "recipes" / "accelerate_configs", "*.yaml", strip_suffix=".yaml")
        )
    if not (repo_root / script).is_file():
        raise LaunchError(
            f"training script '{script}' for task '{task}' not found under {repo_root}; tasks: "
            + _available(repo_root / "scripts", "run_*.py", "run_", ".py")
        )
    return recipe, accelerate_config, script


def build_command(
    model: str,
    task: str,
    precision: str,
    accelerator: str,
    overrides: Sequence[str],
    topology: Topology,
    repo_root: Path,
) -> tuple[list[str], dict[str, Any]]:
    """The `accelerate launch` argv for this node (paths relative to repo_root) and the resolved recipe values."""
    repo_root = Path(repo_root)
    recipe, accelerate_config, script = resolve_files(repo_root, model, task, precision, accelerator)
    values = read_recipe(repo_root / recipe, overrides, base=repo_root)
    command = [
        "accelerate", "launch",
        "--config_file", accelerate_config,
        # Accelerate's DeepSpeed plugin takes gradient accumulation from here; a value different from the recipe's
        # makes transformers refuse to start ("DeepSpeed config values that mismatch TrainingArguments"), so it is
        # pinned to the value the training script will parse.
        "--gradient_accumulation_steps", str(values["gradient_accumulation_steps"]),
        "--num_machines", str(topology.num_nodes),
        "--num_processes", str(topology.num_processes),
        "--machine_rank", str(topology.node_rank),
        "--main_process_ip", topology.main_address,
        "--main_process_port", str(topology.main_port),
        script, recipe, *overrides,
    ]
    return command, values


def batch_summary(topology: Topology, values: Mapping[str, Any]) -> str:
    per_device, accumulation = values["per_device_train_batch_size"], values["gradient_accumulation_steps"]
    total = topology.num_processes * per_device * accumulation
    return (
        f"{topology.num_nodes} node(s) x {topology.gpus_per_node} GPU(s) = {topology.num_processes} process(es); "
        f"global batch = {topology.num_processes} x {per_device} per device x {accumulation} accumulation = {total}"
    )


def srun_command(args: argparse.Namespace, topology: Topology, repo_root: Path) -> list[str]:
    """srun starting one `chatalign.launch run --node_step` per node, all with the topology fixed here."""
    return [
        "srun", f"--nodes={topology.num_nodes}", f"--ntasks={topology.num_nodes}", *SRUN_OPTIONS,
        sys.executable, "-m", "chatalign.launch", "run",
        args.model, args.task, args.precision, args.accelerator, f"--overrides={args.overrides}",
        f"--num_nodes={topology.num_nodes}", f"--gpus_per_node={topology.gpus_per_node}",
        f"--main_address={topology.main_address}", f"--main_port={topology.main_port}",
        f"--repo_root={repo_root}", "--node_step",
    ]


# --------------------------------------------------------------------------------------------------------------------
# Command line


def _add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="recipes/MODEL/...")
    parser.add_argument("task", help="sft, dpo, kto, ...: recipes/MODEL/TASK/ and scripts/run_TASK.py")
    parser.add_argument("precision", help="recipe variant: recipes/MODEL/TASK/config_PRECISION.yaml (full, lora, ...)")
    parser.add_argument("accelerator", help="recipes/accelerate_configs/ACCELERATOR.yaml")
    parser.add_argument("--overrides", default="", help="'--key=value ...' for the training script, one string")
    parser.add_argument("--num_nodes", type=int, help="default: $SLURM_NNODES, else 1")
    parser.add_argument("--gpus_per_node", type=int,
                        help="default: $SLURM_GPUS_ON_NODE, $SLURM_GPUS_PER_NODE, CUDA_VISIBLE_DEVICES, nvidia-smi, 1")
    parser.add_argument("--node_rank", type=int, help="default: $SLURM_PROCID, else 0")
    parser.add_argument("--main_address", help="default: first host of $SLURM_JOB_NODELIST, else 127.0.0.1")
    parser.add_argument("--main_port", type=int, help=f"default: {DEFAULT_MAIN_PORT}")
    parser.add_argument("--repo_root", type=Path, help=f"default: ${REPO_ROOT_ENV}, else this checkout")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chatalign.launch", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build-command", help="print this node's accelerate command (validates the files)")
    _add_launch_arguments(build)
    run = sub.add_parser("run", help="run it: srun one launcher per node when there are several, else accelerate")
    _add_launch_arguments(run)
    run.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                     help="print this node's command instead of running it")
    run.add_argument("--node_step", action="store_true",
                     help="(set by srun) this is the per-node launcher: run accelerate with rank $SLURM_PROCID")
    value = sub.add_parser("recipe-value", help="print one key of a recipe as the training script would parse it")
    value.add_argument("recipe", type=Path)
    value.add_argument("key")
    value.add_argument("--overrides", default="", help="'--key=value ...', one string")
    return parser


def _split_overrides(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as err:
        raise LaunchError(f"cannot split the overrides {text!r}: {err}") from None


def _exec(argv: list[str], cwd: Path) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(cwd)
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        raise LaunchError(f"'{argv[0]}' is not on PATH") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        overrides = _split_overrides(args.overrides)
        if args.command == "recipe-value":
            print(format_value(recipe_value(args.recipe, args.key, overrides)))
            return 0
        repo_root = (args.repo_root or default_repo_root()).resolve()
        topology = detect_topology(
            num_nodes=args.num_nodes, gpus_per_node=args.gpus_per_node, node_rank=args.node_rank,
            main_address=args.main_address, main_port=args.main_port,
        )
        command, values = build_command(args.model, args.task, args.precision, args.accelerator, overrides, topology,
                                      repo_root)
        if args.command == "build-command" or args.dry_run:
            print(batch_summary(topology, values), file=sys.stderr)
            print(shlex.join(command))
            return 0
        if topology.num_nodes > 1 and not args.node_step:
            print(batch_summary(topology, values), file=sys.stderr)
            _exec(srun_command(args, topology, repo_root), repo_root)
        else:
            print(f"node {topology.node_rank}: {shlex.join(command)}", file=sys.stderr)
            _exec(command, repo_root)
    except LaunchError as err:
        print(f"chatalign.launch: error: {err}", file=sys.stderr)
        return 1
    return 0  # not reached: _exec replaces this process


if __name__ == "__main__":
    sys.exit(main())
