"""Loading one split of one dataset source: a hub id, a local file, a folder of files, or a save_to_disk folder.

Local sources name their splits by file name (``train_prefs.jsonl``, ``test-00000-of-00001.parquet``) or by the folder
a file sits in; a source whose names carry no split is one ``train`` split.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets

# File extension -> packaged `datasets` builder that reads it.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Metadata files that sit next to data files (HF save_to_disk, LLaMA-Factory's dataset registry): never rows.
_METADATA_FILES = {"dataset_info.json", "dataset_dict.json", "state.json"}
# A split named in a file stem: a base word, optionally qualified (train_prefs, test_sft), not part of a longer word.
_SPLIT_IN_NAME = re.compile(
    r"(?<![A-Za-z0-9])((?:train|test|validation|valid|val|dev|eval)(?:_[A-Za-z]+)*)(?![A-Za-z0-9])"
)

TRAIN, TEST = "train", "test"


TRAIN, TEST = "train", "test"


class MissingSplitError(ValueError):
    """A source has no split of the requested name; the message lists the splits it has."""


# --------------------------------------------------------------------------------------------------------------------
# Loading one source


def load_source(spec: str, split: str) -> datasets.Dataset:
    """Load split `split` of a source: hub id, local data file, folder of data files, or save_to_disk folder.

    Local sources name their splits by file name (``train_prefs.jsonl``, ``test-00000-of-00001.parquet``); a file or
    folder whose names carry no split is one ``train`` split. A request for ``train_sft`` is served by a split named
    exactly so, else by a generic ``train`` split; a generic request (``train``) by the only ``train_*`` split.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return _load_local(path, spec, split)
    if looks_like_path(spec):
        raise FileNotFoundError(f"dataset '{spec}': no such file or folder")
    return _load_hub(spec, split)


def local_splits(spec: str) -> list[str]:
    """The split names a local source offers (sorted)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset '{spec}': no such file or folder")
    if path.is_dir() and (path / "dataset_dict.json").exists():
        return sorted(datasets.load_from_disk(str(path)).keys())
    if path.is_dir() and (path / "state.json").exists():
        return [_saved_dataset_split(datasets.load_from_disk(str(path)))]
    return sorted(_files_by_split(path, spec))


def looks_like_path(spec: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that does not exist is a mistyped path, not a hub id. So is
    # "data/name" when a local folder "data" exists: a hub organisation does not sit in the working directory.
    return (
        spec.startswith((".", "/", "~"))
        or Path(spec).suffix.lower() in FILE_BUILDERS
        or spec.count("/") > 1
        or "\\" in spec
        or ("/" in spec and Path(spec.split("/")[0]).expanduser().is_dir())
    )


def _load_hub(spec: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(spec, split=split)
    except ValueError as err:  # datasets: 'Unknown split "x". Should be one of [...]' or 'Bad split: x. Available ...'
        if "Unknown split" in str(err) or "Bad split" in str(err):
            raise MissingSplitError(f"dataset '{spec}' has no split '{split}': {err}") from err
        raise


def _load_local(path: Path, spec: str, split: str) -> datasets.Dataset:
    if path.is_dir() and (path / "dataset_dict.json").exists():
        dataset_dict = datasets.load_from_disk(str(path))
        chosen = _resolve_split(split, list(dataset_dict.keys()), spec)
        return dataset_dict[chosen]
    if path.is_dir() and (path / "state.json").exists():
        dataset = datasets.load_from_disk(str(path))
        _resolve_split(split, [_saved_dataset_split(dataset)], spec)
        return dataset
    files = _files_by_split(path, spec)
    chosen = _resolve_split(split, list(files), spec)
    return _read_files(files[chosen], spec)


def _saved_dataset_split(dataset: datasets.Dataset) -> str:
    # A Dataset saved from load_dataset(..., split="test[:10%]") remembers its split; one built in memory does not.
    return str(dataset.split).split("[")[0] if dataset.split else TRAIN


def split_named_in(file_name: str) -> str | None:
    """The split a data file's name declares (``ultrafeedback_train_prefs.jsonl`` -> ``train_prefs``), else None."""
    stem = file_name[: -len(Path(file_name).suffix)] if Path(file_name).suffix else file_name
    match = _SPLIT_IN_NAME.search(stem)
    return match.group(1) if match else None


def _files_by_split(path: Path, spec: str) -> dict[str, list[Path]]:
    if path.is_file():
        if path.suffix.lower() not in FILE_BUILDERS:
            raise ValueError(f"dataset '{spec}': unsupported file type '{path.suffix}' (expected {_extensions()})")
        return {split_named_in(path.name) or TRAIN: [path]}
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in FILE_BUILDERS
        and p.name not in _METADATA_FILES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise ValueError(
            f"dataset '{spec}': folder holds no data files ({_extensions()}) and is no save_to_disk folder"
        )
    by_split: dict[str, list[Path]] = {}
    for file in files:
        # The file name decides; else the nearest folder inside the source that names a split (data/test/0.parquet).
        names = [file.name, *reversed(file.relative_to(path).parts[:-1])]
        split = next((s for s in map(split_named_in, names) if s), TRAIN)
        by_split.setdefault(split, []).append(file)
    return by_split


def _extensions() -> str:
    return ", ".join(FILE_BUILDERS)


def split_base(split: str) -> str:
    return split.split("_")[0]


def _resolve_split(requested: str, available: list[str], spec: str) -> str:
    if requested in available:
        return requested
    if split_base(requested) in available:  # train_sft served by a plain "train" split
        return split_base(requested)
    if requested == split_base(requested):  # plain "test" served by the only test_* split
        qualified = [s for s in available if split_base(s) == requested]
        if len(qualified) == 1:
            return qualified[0]
    raise MissingSplitError(
        f"dataset '{spec}' has no split '{requested}' (available: {', '.join(sorted(available)) or 'none'})"
    )


def _bad_json_line(data_files: list[str]) -> str | None:
    """Where a JSON reader failed: the first file and line that do not parse (datasets' own error names neither)."""
    for name in data_files:
        path = Path(name)
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix.lower() == ".jsonl":
            lines = text.rstrip("\n").split("\n")  # not splitlines(): JSON strings may hold U+2028 and friends
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    torn = " (a torn last line?)" if number == len(lines) else ""
                    return f"file {path} line {number} is not valid JSON{torn}: {err.msg} at column {err.colno}"
                if not isinstance(row, dict):
                    return f"file {path} line {number}: expected a JSON object (one row), got {type(row).__name__}"
        else:
            try:
                json.loads(text)
            except json.JSONDecodeError as err:
                return f"file {path} line {err.lineno} is not valid JSON: {err.msg} at column {err.colno}"
    return None


def _read_files(files: list[Path], spec: str) -> datasets.Dataset:
    by_builder: dict[str, list[str]] = {}
    for file in files:
        by_builder.setdefault(FILE_BUILDERS[file.suffix.lower()], []).append(str(file))
    parts = []
    for builder, data_files in by_builder.items():
        try:
            parts.append(datasets.load_dataset(builder, data_files=data_files, split="train"))
        except Exception as err:  # noqa: BLE001 -- any reader error: say which files, keep the cause chained
            where = _bad_json_line(data_files) if builder == "json" else None
            detail = where or f"could not read {', '.join(data_files)}: {err}"
            raise ValueError(f"dataset '{spec}': {detail}") from err
    if len(parts) == 1:
        return parts[0]
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError as err:
        raise ValueError(f"dataset '{spec}': files {[str(f) for f in files]} have incompatible columns: {err}") from err
