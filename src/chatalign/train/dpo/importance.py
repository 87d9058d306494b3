"""Per-pair values from the analysis scripts that feed back into DPO: LION's rm_importance selection and wis weights.

Both files are JSONL, one row per preference pair keyed by ``pair_id`` (chatalign.store.pair_id of prompt, chosen and
rejected: the key of the precomputed reference file too):

* scripts/compute_lm_reward.py writes ``lm_rewards.jsonl`` with ``weight`` = sigmoid(rejected_reward -
  chosen_reward) (and both rewards, the four log-probs, the margin).
* scripts/compute_importance_weight.py writes ``importance_weights.jsonl`` with ``chosen_logps`` / ``rejected_logps``
  = log mu(y|x) of the candidate generator(s) (and one column pair per candidate).

``rm_importance`` (LION's ``zephyr_dpo_rm_importance.py``): keep the pairs whose weight is >= 0.1, then draw
max_data_size of them without replacement with probability proportional to
``(N(w; 0.3, 0.1) + N(w; 0.75, 0.1)) / count of w's bin`` over 25 equal-width bins of the kept weights
(``np.histogram(w, bins=25)``): dividing by the bin count flattens the data's own distribution, the two normal
densities then shape it into the bimodal target. Unlike LION, max_data_size unset (LION's default -1 crashed) takes
every kept pair, and a pair missing from the file is an error naming it.

``wis`` (LION's ``zephyr_dpo_wis.py``): each pair's loss is multiplied by
``sigmoid(gamma * ((log pi(y_w) - log mu(y_w)) + (log pi(y_l) - log mu(y_l)))) + 1e-6``, computed from the policy's
current log-probs and detached (a weight, not a path for gradients); gamma 0.01 by default.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from chatalign.store import read_jsonl, seeded_rng

logger = logging.getLogger(__name__)

LM_REWARD_FILE = "lm_rewards.jsonl"
IMPORTANCE_FILE = "importance_weights.jsonl"
MU_COLUMNS = ("mu_chosen_logps", "mu_rejected_logps")  # log mu(y|x) columns the wis trainer reads
RM_IMPORTANCE_MIN_WEIGHT = 0.1
RM_IMPORTANCE_BINS = 25
RM_IMPORTANCE_MODES = ((0.3, 0.1), (0.75, 0.1))  # (mean, std) of the two normal densities of the target
WIS_EPSILON = 1e-6


def read_pair_values(path: str | Path, fields: tuple[str, ...], what: str) -> dict[str, dict[str, float] | None]:
    """{pair_id: {field: value}} from a per-pair JSONL file, None for a pair marked ``"dropped": true`` (its prompt
    alone filled max_length when it was scored); a missing field, a non-number, a duplicate pair id with other
    values is an error naming the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    values: dict[str, dict[str, float]] = {}
    for line, row in enumerate(read_jsonl(path), start=1):
        key = row.get("pair_id")
        if not isinstance(key, str) or not key:
            raise ValueError(f"{what} file {path}, line {line}: no pair_id")
        entry: dict[str, float] | None = {}
        if row.get("dropped") is True:
            entry = None
        for name in fields if entry is not None else ():
            value = row.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{what} file {path}, line {line} (pair_id {key[:12]}), field '{name}': a finite "
                                 f"number is needed, got {value!r}")
            entry[name] = float(value)
        if key in values and values[key] != entry:
            raise ValueError(f"{what} file {path}, line {line}: pair_id {key[:12]} appears twice with other values")
        values[key] = entry
    if not values:
        raise ValueError(f"{what} file {path} is empty")
    return values


def values_for_rows(keys: list[str], values: dict[str, dict[str, float] | None], path: str | Path, what: str,
                    describe) -> list[dict[str, float] | None]:
    """The file's entry for every row (None: dropped when scored); rows without one are an error naming the first
    and how many."""
    missing = [i for i, key in enumerate(keys) if key not in values]
    if missing:
        raise ValueError(f"{what} file {path} has no entry for {len(missing)} of the {len(keys)} training pairs, "
                         f"first {describe(missing[0])}: compute it with this recipe's data")
    return [values[key] for key in keys]


# --------------------------------------------------------------------------------------------------------------------
# rm_importance selection


def normal_pdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


def rm_importance_probabilities(weights: np.ndarray, bins: int = RM_IMPORTANCE_BINS) -> np.ndarray:
    """The draw probability of each (kept) pair: bimodal target density over the count of its weight's bin."""
    weights = np.asarray(weights, dtype=np.float64)
    counts, edges = np.histogram(weights, bins=bins)
    # np.histogram's bins are [e_k, e_k+1) with the last one closed; digitize on the inner edges gives the same bin.
    which = np.digitize(weights, edges[1:-1], right=False)
    target = sum(normal_pdf(weights, mean, std) for mean, std in RM_IMPORTANCE_MODES)
    raw = target / counts[which]
    if not raw.sum() > 0:
        raise ValueError("rm_importance: every kept weight is so far from 0.3 and 0.75 that its target density is 0")
    return raw / raw.sum()


def rm_importance_select(weights: np.ndarray, max_data_size: int | None, seed: int,
                         min_weight: float = RM_IMPORTANCE_MIN_WEIGHT,
                         bins: int = RM_IMPORTANCE_BINS) -> tuple[np.ndarray, dict[str, Any]]:
    """Row indices (sorted) of LION's rm_importance selection (module docstring), and its counts."""
    weights = np.asarray(weights, dtype=np.float64)
    kept = np.flatnonzero(weights >= min_weight)
    counts: dict[str, Any] = {"sampling": "rm_importance", "available": len(weights),
                              f"excluded: weight < {min_weight:g}": int(len(weights) - len(kept)),
                              "eligible": int(len(kept))}
    if not len(kept):
        raise ValueError(f"rm_importance: no pair has weight >= {min_weight:g} (of {len(weights)}; largest weight "
                         f"{weights.max() if len(weights) else float('nan'):.3g})")
    k = len(kept) if max_data_size is None else min(max_data_size, len(kept))
    if max_data_size is not None and max_data_size > len(kept):
        logger.warning("rm_importance: max_data_size %d exceeds the %d pairs with weight >= %g: taking them all",
                       max_data_size, len(kept), min_weight)
    probabilities = rm_importance_probabilities(weights[kept], bins)
    drawable = int((probabilities > 0).sum())
    if k > drawable:
        logger.warning("rm_importance: only %d kept pairs have a positive draw probability; taking %d", drawable,
                       drawable)
        k = drawable
    picked = seeded_rng(seed, "rm_importance").choice(len(kept), size=k, replace=False, p=probabilities)
    indices = np.sort(kept[picked]).astype(np.int64)
    hist_selected, edges = np.histogram(weights[indices], bins=10, range=(0.0, 1.0))
    hist_available, _ = np.histogram(weights, bins=10, range=(0.0, 1.0))
    counts["selected"] = int(len(indices))
    counts["weight histogram (10 bins of [0, 1])"] = {
        f"{edges[i]:.1f}-{edges[i + 1]:.1f}": {"available": int(hist_available[i]), "selected": int(hist_selected[i])}
        for i in range(10)
    }
    lines = [f"  {b:>9}  {v['available']:>9}  {v['selected']:>8}"
             for b, v in counts["weight histogram (10 bins of [0, 1])"].items()]
    logger.info("rm_importance selection (seed %d): %d of %d pairs (%d with weight < %g excluded)\n  %9s  %9s  %8s\n%s",
                seed, len(indices), len(weights), len(weights) - len(kept), min_weight, "weight", "available",
                "selected", "\n".join(lines))
    return indices, counts


# --------------------------------------------------------------------------------------------------------------------
# wis weights


def wis_weight(policy_chosen_logps, policy_rejected_logps, mu_chosen_logps, mu_rejected_logps, gamma: float):
    """LION's wis weight of each pair (module docstring); torch tensors in, a detached tensor out."""
    import torch

    log_ratio = (policy_chosen_logps.detach() - mu_chosen_logps) + (policy_rejected_logps.detach() - mu_rejected_logps)
    return torch.sigmoid(gamma * log_ratio) + WIS_EPSILON
