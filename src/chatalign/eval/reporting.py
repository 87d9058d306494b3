"""What the show_* scripts print and draw: aligned tables, statistics over runs, and PNG plots."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], title: str = "",
                 digits: int = 2) -> str:
    """A column-aligned text table; numbers with `digits` decimals, a missing value as '-'."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    body = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in body]) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths,
                                                                                            strict=True))))
    lines.append("  ".join("-" * w for w in widths))
    for line in body:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths,
                                                                                              strict=True))))
    return "\n".join(lines)


def run_statistics(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, standard deviation (sample; 0 for one run) and median over runs; missing when any run has no value."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "median": None, "runs": len(values)}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "median": statistics.median(values), "runs": len(values)}


def radar_plot(path: str | Path, axes: Sequence[str], series: Mapping[str, Sequence[float | None]],
               title: str = "", limit: float = 10.0) -> Path:
    """A radar chart (one polygon per model over `axes`), as FastChat draws MT-Bench categories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    angles = [2 * math.pi * i / len(axes) for i in range(len(axes))] + [0.0]
    figure, ax = plt.subplots(figsize=(7, 7), subplot_kw={"polar": True})
    for name, values in series.items():
        points = [0.0 if v is None else v for v in values]
        ax.plot(angles, points + points[:1], label=name)
        ax.fill(angles, points + points[:1], alpha=0.1)
    ax.set_xticks(angles[:-1], list(axes))
    ax.set_ylim(0, limit)
    ax.set_title(title)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize="small")
    return _save(figure, path)


def bar_plot(path: str | Path, labels: Sequence[str], values: Sequence[float | None], title: str = "",
             ylabel: str = "", errors: Sequence[tuple[float, float]] | None = None) -> Path:
    """Horizontal bars, largest first; `errors` are (low, high) interval ends around each value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(labels)), key=lambda i: -(values[i] or 0.0))
    figure, ax = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
    shown = [values[i] or 0.0 for i in order]
    xerr = None
    if errors is not None:
        xerr = [[shown[k] - errors[i][0] for k, i in enumerate(order)],
                [errors[i][1] - shown[k] for k, i in enumerate(order)]]
    ax.barh([labels[i] for i in order], shown, xerr=xerr)
    ax.invert_yaxis()
    ax.set_xlabel(ylabel)
    ax.set_title(title)
    return _save(figure, path)


def grouped_bar_plot(path: str | Path, groups: Sequence[str], series: Mapping[str, Sequence[float | None]],
                     title: str = "", ylabel: str = "") -> Path:
    """One panel per benchmark (each on its own scale), one bar per model; a missing score is drawn as no bar."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, max(len(groups), 1), figsize=(max(6.0, 3.2 * len(groups)), 4.2), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for g, (ax, group) in enumerate(zip(axes[0], groups, strict=False)):
        for k, (name, values) in enumerate(series.items()):
            if values[g] is not None:
                ax.bar(k, values[g], color=colours[k % len(colours)], label=name)
        ax.set_xticks([])
        ax.set_title(group, fontsize="medium")
        ax.set_ylabel(ylabel if g == 0 else "")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[k % len(colours)]) for k in range(len(series))]
    figure.legend(handles, list(series), loc="lower center", ncol=min(len(series), 4), fontsize="small")
    width_chars = int(figure.get_size_inches()[0] * 11)  # about what one line of the title font holds
    figure.suptitle("\n".join(textwrap.wrap(title, width_chars)), fontsize="medium")
    figure.tight_layout(rect=(0, 0.08, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


HEADLINES = {  # (bench, label, how to read it from the bench's summary)
    "mt_bench": [("MT-Bench (FastChat avg)", lambda s: s["over_runs"].get("average", {}).get("mean")),
                 ("MT-Bench overall (LION)", lambda s: s["over_runs"].get("lion_overall", {}).get("mean"))],
    "alpaca_eval": [("AlpacaEval win rate", lambda s: s["over_runs"]["win_rate"]["mean"]),
                    ("AlpacaEval LC win rate", lambda s: s["over_runs"]["length_controlled_winrate"]["mean"])],
    "arena-hard-v0.1": [("Arena-Hard v0.1", lambda s: s["over_runs"]["arena-hard-v0.1"]["mean"])],
    "arena-hard-v2.0": [("Arena-Hard v2.0 hard prompts", lambda s: s["over_runs"].get("hard_prompt", {}).get("mean"))],
    "lm_eval": [("Open LLM v1 average", lambda s: s.get("openllm_v1_average")),
                ("lm-eval classification avg", lambda s: s.get("classification_average")),
                ("lm-eval generation avg", lambda s: s.get("generation_average"))],
}


def headline_scores(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """The scores a comparison table shows of one eval summary (eval_results/<bench>.json)."""
    out = {}
    for label, read in HEADLINES.get(summary.get("bench"), []):
        try:
            out[label] = read(summary)
        except (KeyError, TypeError):
            out[label] = None
    return out


def _save(figure, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
