"""LION's "partial" importance weights: log mu(y|x) of every chosen and rejected response under candidate generators.

A preference set's responses were sampled from models that are often unknown; each candidate generator (a checkpoint
with its own tokenizer and chat template or prompt format) scores every response, and the per-candidate log-probs
are merged into one file keyed by pair id. Its ``chosen_logps`` / ``rejected_logps`` are those of the candidates'
uniform mixture, log((1/K) sum_k mu_k(y|x)) (with one candidate: that candidate's), which run_dpo's
``wis_importance_file`` reads; every candidate's own pair of columns is kept beside them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chatalign.configs import ConfigError

CANDIDATE_KEYS = ("name", "model_name_or_path", "revision", "tokenizer_name_or_path", "chat_template")


def parse_candidates(candidates: Sequence[Mapping[str, Any]] | None, model_name_or_path: str | None,
                     chat_template: str | None) -> list[dict[str, Any]]:
    """The candidate generators: the recipe's `candidate_models` list, else the one model_name_or_path."""
    if not candidates:
        if not model_name_or_path:
            raise ConfigError("give model_name_or_path (one candidate generator) or candidate_models (a list of "
                              "{name, model_name_or_path, chat_template, revision, tokenizer_name_or_path})")
        candidates = [{"model_name_or_path": model_name_or_path, "chat_template": chat_template}]
    out, names = [], set()
    for index, spec in enumerate(candidates):
        if not isinstance(spec, Mapping):
            raise ConfigError(f"candidate_models[{index}] must be a mapping, got {spec!r}")
        unknown = sorted(set(spec) - set(CANDIDATE_KEYS))
        if unknown:
            raise ConfigError(f"candidate_models[{index}]: unknown key(s) {', '.join(unknown)}; known: "
                              f"{', '.join(CANDIDATE_KEYS)}")
        if not spec.get("model_name_or_path"):
            raise ConfigError(f"candidate_models[{index}]: model_name_or_path is required")
        name = spec.get("name") or Path(str(spec["model_name_or_path"]).rstrip("/")).name
        if name in names:
            raise ConfigError(f"candidate_models[{index}]: name '{name}' is used twice; give each a distinct name")
        if "/" in name or not name.strip():
            raise ConfigError(f"candidate_models[{index}]: name {name!r} must be a plain name (it names a file)")
        names.add(name)
        out.append({"name": name, "model_name_or_path": str(spec["model_name_or_path"]),
                    "revision": spec.get("revision"), "tokenizer_name_or_path": spec.get("tokenizer_name_or_path"),
                    "chat_template": spec.get("chat_template", chat_template)})
    return out


def mixture_logp(logps: Sequence[float]) -> float:
    """log((1/K) sum exp(logp_k)), computed stably."""
    top = max(logps)
    return top + math.log(sum(math.exp(lp - top) for lp in logps)) - math.log(len(logps))


def importance_rows(rows: Sequence[dict], keys: Sequence[str], per_candidate: Mapping[str, Sequence]) -> tuple:
    """One merged row per pair; a pair some candidate dropped (its prompt alone fills max_length under that
    candidate's template) is kept as ``"dropped": true`` with no log-probs, so run_dpo's wis excludes it by name
    rather than finding it missing. Also the count of such pairs."""
    out, dropped = [], 0
    for index, (row, key) in enumerate(zip(rows, keys, strict=True)):
        values = {name: logps[index] for name, logps in per_candidate.items()}
        ids = {"pair_id": key, "prompt_id": row.get("prompt_id"), "source": row.get("source")}
        if any(v is None for v in values.values()):
            dropped += 1
            out.append({**ids, "dropped": True, "chosen_logps": None, "rejected_logps": None})
            continue
        merged = {**ids, "dropped": False,
                  "chosen_logps": mixture_logp([v[0] for v in values.values()]),
                  "rejected_logps": mixture_logp([v[1] for v in values.values()])}
        for name, (chosen, rejected) in values.items():
            merged[f"logps/{name}/chosen"] = chosen
            merged[f"logps/{name}/rejected"] = rejected
        out.append(merged)
    return out, dropped
