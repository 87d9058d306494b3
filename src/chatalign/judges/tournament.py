"""The PairRM-style tournament that turns pairwise comparisons of samples into scores (see chatalign.judges)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def tournament_pairs(texts: Sequence[str], both_orders: bool = True) -> list[tuple[str, str]]:
    """The ordered (a, b) comparisons a tournament over `texts` needs: distinct texts only, each pair once per order."""
    unique = list(dict.fromkeys(texts))
    pairs = []
    for i, a in enumerate(unique):
        for b in unique[i + 1:]:
            pairs.append((a, b))
            if both_orders:
                pairs.append((b, a))
    return pairs


def tournament_wins(texts: Sequence[str], prob: Callable[[str, str], float | None],
                    both_orders: bool = True) -> tuple[list[float], int]:
    """(points per sample, unjudged pairs): every pair of samples compared by prob(a, b) = P(a better than b).

    See the module docstring for the rule; `prob` is only called for distinct texts and pairs tournament_pairs lists.
    """
    n = len(texts)
    points = [0.0] * n
    unjudged = 0
    for i in range(n):
        for j in range(i + 1, n):
            a, b = texts[i], texts[j]
            if a == b:
                p = 0.5
            else:
                # Pairs are listed once per unordered pair of distinct texts, in the order of first appearance.
                first, second = (a, b) if texts.index(a) < texts.index(b) else (b, a)
                estimates = []
                forward = prob(first, second)
                if forward is not None:
                    estimates.append(forward)
                if both_orders:
                    backward = prob(second, first)
                    if backward is not None:
                        estimates.append(1.0 - backward)
                if not estimates:
                    unjudged += 1
                    continue
                p_first = sum(estimates) / len(estimates)
                p = p_first if first == a else 1.0 - p_first
            if p > 0.5:
                points[i] += 1.0
            elif p < 0.5:
                points[j] += 1.0
            else:
                points[i] += 0.5
                points[j] += 0.5
    return points, unjudged


def rank_by_wins(prompt: Sequence[dict], responses: Sequence[str],
                 compare: Callable[[Sequence[dict], str, str], float | None],
                 both_orders: bool = True) -> tuple[list[float], int]:
    """The tournament over a plain `compare(prompt, a, b) -> P(a better)` function (no cache, one call per pair)."""
    table = {(a, b): compare(prompt, a, b) for a, b in tournament_pairs(responses, both_orders)}
    return tournament_wins(responses, lambda a, b: table[(a, b)], both_orders)
