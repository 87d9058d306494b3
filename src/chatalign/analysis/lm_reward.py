"""Implicit DPO rewards of preference pairs under a policy and a reference, and LION's weight from them.

For each pair, with summed response log-probs (chatalign.analysis.sequence_logps):

    chosen_reward   = beta * (log pi(y_w|x) - log pi_ref(y_w|x))
    rejected_reward = beta * (log pi(y_l|x) - log pi_ref(y_l|x))
    margin          = chosen_reward - rejected_reward
    weight          = sigmoid(rejected_reward - chosen_reward)      (LION's compute_lm_reward.py, as it computes it)

With LION's configuration, the SFT model as policy and the DPO model as reference, rejected_reward - chosen_reward is
the DPO model's own implicit reward margin (beta * log pi_dpo/pi_sft of y_w minus that of y_l), so the weight is the
probability that the DPO model prefers the chosen response; run_dpo's rm_importance selection reads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chatalign.store import atomic_path

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def reward_row(policy: tuple[float, float], reference: tuple[float, float], beta: float) -> dict[str, float]:
    """The rewards, margin and weight of one pair from (chosen, rejected) log-probs of policy and reference."""
    chosen_reward = beta * (policy[0] - reference[0])
    rejected_reward = beta * (policy[1] - reference[1])
    return {"policy_chosen_logps": policy[0], "policy_rejected_logps": policy[1],
            "ref_chosen_logps": reference[0], "ref_rejected_logps": reference[1],
            "chosen_reward": chosen_reward, "rejected_reward": rejected_reward,
            "margin": chosen_reward - rejected_reward, "weight": sigmoid(rejected_reward - chosen_reward)}


def reward_rows(rows: Sequence[dict], keys: Sequence[str], policy, reference, beta: float) -> tuple[list, int]:
    """One output row per pair (the pair's ids first), and how many pairs TRL drops (prompt fills max_length): those
    are kept as ``"dropped": true`` without numbers, so rm_importance knows them rather than finding them missing."""
    out, dropped = [], 0
    for row, key, pol, ref in zip(rows, keys, policy, reference, strict=True):
        ids = {"pair_id": key, "prompt_id": row.get("prompt_id"), "source": row.get("source")}
        if pol is None or ref is None:
            dropped += 1
            out.append({**ids, "dropped": True, "weight": None})
            continue
        out.append({**ids, "dropped": False, **reward_row(pol, ref, beta)})
    return out, dropped


def scored(rows: Sequence[dict]) -> list[dict]:
    """The rows with numbers (not dropped)."""
    return [r for r in rows if not r.get("dropped")]


def reward_summary(rows: Sequence[dict], beta: float, dropped: int) -> dict[str, Any]:
    """Implicit-reward accuracy against the labels, margin and weight quantiles, over the scored rows."""
    rows = scored(rows)
    margins = np.array([r["margin"] for r in rows], dtype=np.float64)
    weights = np.array([r["weight"] for r in rows], dtype=np.float64)
    summary: dict[str, Any] = {"pairs": len(rows), "dropped: prompt fills max_length": dropped, "beta": beta}
    if not len(rows):
        summary.update(accuracy=None, mean_margin=None)
        return summary
    summary.update(
        accuracy=float((margins > 0).mean()),  # the policy's implicit reward ranks chosen above rejected
        ties=int((margins == 0).sum()),
        mean_margin=float(margins.mean()),
        margin_quantiles={f"{q:g}": float(np.quantile(margins, q)) for q in QUANTILES},
        mean_weight=float(weights.mean()),
        weight_above_half=float((weights > 0.5).mean()),
        weight_quantiles={f"{q:g}": float(np.quantile(weights, q)) for q in QUANTILES},
    )
    return summary


def format_reward_summary(summary: dict[str, Any], title: str) -> str:
    lines = [title, f"  pairs                        {summary['pairs']} "
                    f"({summary['dropped: prompt fills max_length']} dropped: prompt fills max_length)"]
    if summary["accuracy"] is None:
        return "\n".join([*lines, "  no pair to score"])
    lines += [f"  implicit-reward accuracy     {100 * summary['accuracy']:.1f}% (margin > 0; {summary['ties']} ties)",
              f"  weight > 0.5                 {100 * summary['weight_above_half']:.1f}%  (mean weight "
              f"{summary['mean_weight']:.3f})",
              "  margin quantiles             " + "  ".join(f"{q}: {v:+.3f}"
                                                         for q, v in summary["margin_quantiles"].items())]
    return "\n".join(lines)


def plot_margins(rows: Sequence[dict], path: str | Path, title: str) -> Path:
    """Histograms of the reward margin and of the weight, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = scored(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.hist([r["margin"] for r in rows], bins=40, color="#4c72b0")
    left.axvline(0.0, color="black", linewidth=0.8)
    left.set_xlabel("chosen_reward - rejected_reward")
    left.set_ylabel("pairs")
    right.hist([r["weight"] for r in rows], bins=25, range=(0.0, 1.0), color="#dd8452")
    right.set_xlabel("weight = sigmoid(rejected_reward - chosen_reward)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
