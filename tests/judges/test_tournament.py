"""chatalign.judges.tournament: pairwise comparisons to scores."""

from __future__ import annotations

from helpers.judging import PROMPT

from chatalign.judges.tournament import rank_by_wins


def by_length(prompt, a, b):
    return 1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5


def test_tournament_ranks_by_wins():
    scores, unjudged = rank_by_wins(PROMPT, ["aa", "a", "aaaa", "aaa"], by_length)
    assert (scores, unjudged) == ([1.0, 0.0, 3.0, 2.0], 0)
    # equal lengths, distinct texts: the comparator says 0.5 -> half a point each
    assert rank_by_wins(PROMPT, ["ab", "cd", "e"], by_length)[0] == [1.5, 1.5, 0.0]


def test_tournament_cancels_position_bias_in_both_orders():
    first_wins = lambda prompt, a, b: 1.0  # noqa: E731 -- a judge that always prefers whatever it is shown first
    texts = ["w", "x", "y", "z"]
    assert rank_by_wins(PROMPT, texts, first_wins)[0] == [1.5, 1.5, 1.5, 1.5]
    assert rank_by_wins(PROMPT, texts, first_wins, both_orders=False)[0] == [3.0, 2.0, 1.0, 0.0]


def test_tournament_compares_distinct_texts_once_per_order():
    calls = []

    def compare(prompt, a, b):
        calls.append((a, b))
        return by_length(prompt, a, b)

    scores, _ = rank_by_wins(PROMPT, ["bb", "a", "bb", "a"], compare)
    assert sorted(calls) == [("a", "bb"), ("bb", "a")]
    # bb beats both a's (2 points) and ties the other bb (0.5)
    assert scores == [2.5, 0.5, 2.5, 0.5]


def test_tournament_counts_unjudged_pairs():
    def compare(prompt, a, b):
        return None if {a, b} == {"a", "ccc"} else by_length(prompt, a, b)

    scores, unjudged = rank_by_wins(PROMPT, ["a", "bb", "ccc"], compare)
    assert (scores, unjudged) == ([0.0, 1.0, 1.0], 1)
    # one order parsed: it alone decides
    one_order = lambda prompt, a, b: None if (a, b) == ("ccc", "a") else by_length(prompt, a, b)  # noqa: E731
    assert rank_by_wins(PROMPT, ["a", "bb", "ccc"], one_order) == ([0.0, 1.0, 2.0], 0)
