"""Recipe parsing: YAML files merged in order, then command-line overrides, into typed dataclasses.

TRL's `TrlParser` reads one YAML file and quietly ignores or half-checks what it doesn't know. Here an unknown key, in a
file or on the command line, is an error that names the key, where it came from and the closest valid keys; a value of
the wrong type is an error that names the key and the expected type. Parsing is built on transformers'
`HfArgumentParser` (for the dataclass plumbing and `--help`) with our own value coercion, because argparse's type
functions neither see YAML values nor produce errors that name the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from transformers import HfArgumentParser

RUN_ARGS_FILE = "run_args.yaml"


class ConfigError(ValueError):
    """A recipe or command-line problem, reported before any expensive work starts."""


# --------------------------------------------------------------------------------------------------------------------
# Type coercion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if origin is not None:
        return repr(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, from_cli: bool) -> Any:
    """Convert `value` to type `tp` or raise _Mismatch. CLI values arrive as strings, YAML values already typed."""
    if tp is Any or tp is object:
        return yaml.safe_load(value) if from_cli and isinstance(value, str) else value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        raise _Mismatch
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        # Prefer the member whose type the value already has, so "linear" stays a str where str is allowed
        # before an Enum would be tried, and a YAML list goes to the list member.
        members = sorted((a for a in args if a is not type(None)), key=lambda a: not _already(value, a))
        if type(None) in args:
            members.append(type(None))
        for member in members:
            try:
                return _coerce(value, member, from_cli)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise _Mismatch
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _Mismatch from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        raise _Mismatch
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str) and from_cli:
            # One CLI token: a YAML list `[a, b]`, else comma-separated. Several tokens arrive as a list already.
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            if isinstance(value, (dict, type(None))):
                raise _Mismatch
            value = [value]
        item_type = args[0] if args else Any
        return [_coerce(v, item_type, from_cli) for v in value]
    if origin is dict or tp is dict:
        if isinstance(value, str) and from_cli:
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise _Mismatch from None
        if not isinstance(value, dict):
            raise _Mismatch
        return value
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value


def _already(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    if isinstance(origin, type) and not issubclass(origin, enum.Enum):
        if origin is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        return isinstance(value, origin)
    return False


# --------------------------------------------------------------------------------------------------------------------
# The parser


def load_recipe_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"recipe file '{path}' does not exist")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe file '{path}' is not valid YAML: {err}") from None
    if content is None:  # an empty file, or only comments: running on defaults would reach for the hub
        raise ConfigError(f"recipe file '{path}' is empty: it sets no key")
    if not isinstance(content, dict):
        raise ConfigError(f"recipe file '{path}' must hold a mapping of keys to values, not {type(content).__name__}")
    # A run_args.yaml written by a previous run can be given back as a recipe: its `args` block is the recipe.
    if set(content) == {"chatalign", "args"}:
        content = dict(content["args"])
    return content


class ChatalignParser(HfArgumentParser):
    """`parse(argv)` -> one instance per dataclass, from YAML files then `--key=value` / `--key value` overrides.

    Usage: `script.py a.yaml b.yaml --learning_rate=1e-5 --beta 0.05`. Later files override earlier ones, the
    command line overrides all. With `--configs NAME [NAME ...]` each YAML file is a set of named blocks and the named
    blocks are merged in order, as Open-Assistant's trainer does (`--configs defaults galactica-125m`).
    """

    def __init__(self, dataclass_types, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(dataclass_types, **kwargs)
        self.field_types: dict[str, list[tuple[type, Any]]] = {}
        self.field_choices: dict[str, list] = {}
        for dtype in self.dataclass_types:
            hints = typing.get_type_hints(dtype)
            for f in dataclasses.fields(dtype):
                if f.init:
                    self.field_types.setdefault(f.name, []).append((dtype, hints[f.name]))
                    if f.metadata.get("choices"):
                        self.field_choices[f.name] = list(f.metadata["choices"])

    # -- helpers -------------------------------------------------------------------------------------------------
    def _unknown(self, key: str, where: str) -> ConfigError:
        close = difflib.get_close_matches(key, self.field_types, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return ConfigError(f"unknown key '{key}' in {where}{hint}")

    def _coerce_value(self, key: str, value: Any, where: str, from_cli: bool) -> Any:
        _, tp = self.field_types[key][0]
        try:
            coerced = _coerce(value, tp, from_cli)
        except _Mismatch:
            raise ConfigError(
                f"key '{key}' in {where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
            ) from None
        # argparse would enforce a field's `choices`; we parse values ourselves, so check them here.
        choices = self.field_choices.get(key)
        if choices and coerced is not None:
            values = coerced if isinstance(coerced, list) else [coerced]
            plain = [v.value if isinstance(v, enum.Enum) else v for v in values]
            bad = [v for v in plain if v not in choices]
            if bad:
                raise ConfigError(f"key '{key}' in {where}: {bad[0]!r} is not one of "
                                  f"{', '.join(repr(c) for c in choices)}")
        return coerced

    def _split_argv(self, argv: list[str]) -> tuple[list[Path], list[str], list[tuple[str, str | None]]]:
        files, blocks, overrides = [], [], []
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg == "--configs":
                i += 1
                while i < len(argv) and not argv[i].startswith("--"):
                    blocks.append(argv[i])
                    i += 1
                continue
            if arg.startswith("--"):
                key, eq, value = arg[2:].partition("=")
                if not eq:
                    # `--key value`, `--key v1 v2 ...` (a list, as argparse's nargs="+"), or a bare flag `--key`
                    values = []
                    while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                        values.append(argv[i + 1])
                        i += 1
                    value = None if not values else values[0] if len(values) == 1 else values
                overrides.append((key.replace("-", "_"), value))
            elif arg.endswith((".yaml", ".yml")) and not overrides:
                files.append(Path(arg))
            else:
                raise ConfigError(
                    f"unexpected argument '{arg}': give YAML recipe files first, then --key=value overrides"
                )
            i += 1
        return files, blocks, overrides

    def _merge_files(self, files: list[Path], blocks: list[str]) -> dict[str, tuple[Any, str]]:
        merged: dict[str, tuple[Any, str]] = {}
        sources = [(path, load_recipe_file(path)) for path in files]
        if blocks:
            named = {}
            for path, content in sources:
                for name, block in content.items():
                    if not isinstance(block, dict):
                        raise ConfigError(f"with --configs, '{path}' must hold named blocks; '{name}' is not a block")
                    named[name] = (path, block)
            layers = []
            for name in blocks:
                if name not in named:
                    close = difflib.get_close_matches(name, named, n=3)
                    raise ConfigError(
                        f"config block '{name}' not found in {', '.join(str(p) for p in files)}"
                        + (f"; did you mean {', '.join(close)}?" if close else f"; blocks: {', '.join(named)}")
                    )
                path, block = named[name]
                layers.append((f"block '{name}' of '{path}'", block))
        else:
            layers = [(f"'{path}'", content) for path, content in sources]
        for where, content in layers:
            for key, value in content.items():
                if key not in self.field_types:
                    raise self._unknown(key, where)
                merged[key] = (self._coerce_value(key, value, where, from_cli=False), where)
        return merged

    # -- entry point ---------------------------------------------------------------------------------------------
    def parse(self, argv: list[str] | None = None) -> tuple:
        argv = list(sys.argv[1:] if argv is None else argv)
        if "-h" in argv or "--help" in argv:
            self.print_help()
            raise SystemExit(0)
        files, blocks, overrides = self._split_argv(argv)
        if blocks and not files:
            raise ConfigError("--configs names blocks, but no YAML file to read them from was given")
        merged = self._merge_files(files, blocks)
        for key, raw in overrides:
            if key not in self.field_types:
                raise self._unknown(key, "the command line")
            value = "true" if raw is None else raw
            merged[key] = (self._coerce_value(key, value, "the command line", from_cli=True), "the command line")
        self.sources = {key: where for key, (_, where) in merged.items()}
        values = {key: value for key, (value, _) in merged.items()}
        outputs = []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            kwargs = {k: v for k, v in values.items() if k in names}
            try:
                outputs.append(dtype(**kwargs))
            except (ValueError, TypeError) as err:
                # A check that names its key first (e.g. "special_tokens.pad_token ...") gets where the key was set.
                where = self.sources.get(re.match(r"\w*", str(err)).group())
                raise ConfigError(f"invalid {dtype.__name__}: {err}" + (f" (from {where})" if where else "")) from err
        return tuple(outputs)


# --------------------------------------------------------------------------------------------------------------------
# run_args.yaml: the fully resolved config of a run, read back by the eval scripts

SECRET_ENV_VARS = ("OPENAI_API_KEY", "WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "ANTHROPIC_API_KEY")
# Keys whose values are credentials. Matched by name, not substring: tokenizer_name_or_path, api_key_env (the *name* of
# a variable) and include_num_input_tokens_seen are configuration and must survive into run_args.yaml.
SECRET_SUFFIXES = ("hub_token", "_api_key", "api_key", "password", "secret", "access_token", "auth_token")


def _is_secret_key(key: str) -> bool:
    key = key.lower()
    return key in ("token",) or key.endswith(SECRET_SUFFIXES)


def _mask_command(argv: list[str], secrets: set[str]) -> str:
    """The command line with the values of secret-named keys masked (`--hub_token=x` and `--hub_token x`)."""
    masked, hide_next = [], False
    for arg in argv:
        if hide_next:
            masked.append("***")
            hide_next = False
            continue
        key, eq, _ = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key and _is_secret_key(key.replace("-", "_")):
            if eq:
                masked.append(f"--{key}=***")
            else:
                masked.append(arg)
                hide_next = True
            continue
        masked.append(arg)
    return _plain(" ".join(masked), secrets)


def _plain(value: Any, secrets: set[str]) -> Any:
    if isinstance(value, enum.Enum):
        return _plain(value.value, secrets)
    if isinstance(value, dict):
        return {str(k): _plain(v, secrets) for k, v in value.items() if not _is_secret_key(str(k))}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v, secrets) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value), secrets)
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def git_commit(repo_dir: Path | None = None) -> str | None:
    import subprocess

    repo_dir = repo_dir or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names=("chatalign", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
                            "deepspeed", "vllm", "sglang", "wandb")) -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def current_wandb_run() -> dict[str, str] | None:
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb else None
    if run is None:
        return None
    return {"id": run.id, "project": run.project, "entity": getattr(run, "entity", None) or ""}


def _secret_values() -> set[str]:
    import os

    return {os.environ[name] for name in SECRET_ENV_VARS if os.environ.get(name)}


def resolved_args(configs) -> dict[str, Any]:
    """Every resolved key of the configs as plain YAML values, secrets left out: the `args` block of run_args.yaml."""
    secrets = _secret_values()
    return {f.name: _plain(getattr(config, f.name), secrets) for config in configs for f in dataclasses.fields(config)
            if f.init and not _is_secret_key(f.name)}


def write_run_args(output_dir: str | Path, configs, script: str | None = None, extra: dict | None = None) -> Path:
    """Write `<output_dir>/run_args.yaml`: every resolved key, the git commit, package versions, the wandb run.

    Secret-looking keys are left out and the values of secret environment variables are masked wherever they appear.
    Called again after training starts so the wandb run id (known only then) is recorded.
    """
    import datetime

    secrets = _secret_values()
    args = resolved_args(configs)
    meta = {
        "script": script or Path(sys.argv[0]).name,
        "command": _mask_command(sys.argv, secrets),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "wandb": current_wandb_run(),
    }
    if extra:
        meta.update(_plain(extra, secrets))
    path = Path(output_dir) / RUN_ARGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by chatalign. Re-run with: python scripts/<script>.py " + str(path) + "\n"
    path.write_text(header + yaml.safe_dump({"chatalign": meta, "args": args}, sort_keys=False, allow_unicode=True))
    return path


def read_run_args(model_dir: str | Path) -> dict[str, Any] | None:
    """The `{chatalign: meta, args: {...}}` document of a trained model, or None where the run wrote none."""
    path = Path(model_dir) / RUN_ARGS_FILE
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())
