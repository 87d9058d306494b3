"""Where every benchmark's summary goes: ``<model_path>/eval_results/<bench>.json`` (or ``result_save_path``), and,
with ``to_wandb``, the wandb run that trained the model (the one its run_args.yaml names)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatalign.configs import read_run_args
from chatalign.store import write_text

logger = logging.getLogger(__name__)


@dataclass
class EvalOutputArguments:
    """Recipe/CLI keys of where the run_* eval scripts put their summary."""

    result_save_path: str | None = field(default=None, metadata={"help": "Summary JSON (default: <model_path>/"
                                                                         "eval_results/<bench>.json)."})
    to_wandb: bool = field(default=False, metadata={"help": "Log the scores to the wandb run named in "
                                                            "<model_path>/run_args.yaml."})


def wandb_run_of(model_path: str | None) -> dict[str, str]:
    """The wandb run ({id, project, entity}) that trained `model_path`; an error naming the file where there is none
    (checked before any answer is generated)."""
    meta = (read_run_args(model_path) or {}).get("chatalign", {}) if model_path and Path(model_path).is_dir() else {}
    run = meta.get("wandb")
    if not run or not run.get("id"):
        where = Path(model_path or "<no model_path>") / "run_args.yaml"
        raise ValueError(f"--to_wandb: {where} names no wandb run (train with report_to=wandb, or leave to_wandb off)")
    return run


def summary_path(bench: str, model_path: str | None, result_save_path: str | None, fallback_dir: str | Path) -> Path:
    if result_save_path:
        return Path(result_save_path)
    if model_path and Path(model_path).is_dir():
        return Path(model_path) / "eval_results" / f"{bench}.json"
    return Path(fallback_dir) / "eval_results" / f"{bench}.json"


def save_summary(summary: dict[str, Any], path: str | Path) -> Path:
    write_text(path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return Path(path)


def log_to_wandb(run: dict[str, str], bench: str, scores: dict[str, Any]) -> None:
    """Add `scores` (flat name -> number; missing ones skipped) to the run's summary as `<bench>/<name>`. The key
    comes from WANDB_API_KEY in the environment, as wandb reads it; nothing of it is written here."""
    import wandb

    values = {f"{bench}/{name}": value for name, value in scores.items()
              if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))}
    resumed = wandb.init(id=run["id"], project=run.get("project") or None, entity=run.get("entity") or None,
                         resume="allow", job_type="eval")
    try:
        resumed.summary.update(values)
        resumed.log(values)
    finally:
        resumed.finish()
        wandb.teardown()  # wandb keeps its settings in a process-wide singleton; a later run must read its own
    logger.info("logged %d %s scores to wandb run %s", len(values), bench, run["id"])
