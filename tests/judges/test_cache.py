"""chatalign.judges.cache: no judgment is paid for twice; failed requests are not cached."""

from __future__ import annotations

from helpers.judging import PROMPT, length_judge

from chatalign.judges.cache import Judgment, JudgmentCache, cached_scores
from chatalign.judges.models import FunctionJudge


def test_cache_pays_each_judgment_once(tmp_path):
    judge = length_judge()
    cache = JudgmentCache(tmp_path / "a.jsonl")
    requests = [(PROMPT, "pear"), (PROMPT, "fig"), (PROMPT, "pear"), (PROMPT, "why?")]
    out = cached_scores(judge, cache, requests)
    assert [j.value for j in out] == [4.0, 3.0, 4.0, None]
    assert judge.calls == cache.paid == 3  # the repeated "pear" is asked once
    again = JudgmentCache(tmp_path / "a.jsonl")  # a new process reads the file
    assert [j.value for j in cached_scores(judge, again, requests)] == [4.0, 3.0, 4.0, None]
    assert judge.calls == 3 and again.paid == 0
    # another process's file is read too; a different prompt or judge is a different judgment
    other = JudgmentCache(tmp_path / "b.jsonl", read_also=[tmp_path / "a.jsonl"])
    cached_scores(judge, other, [(PROMPT, "pear"), ([{"role": "user", "content": "x"}], "pear")])
    assert other.paid == 1
    renamed = FunctionJudge("length-v2", score=lambda p, r: 1.0)
    cached_scores(renamed, other, [(PROMPT, "pear")])
    assert renamed.calls == 1


def test_failed_requests_are_not_cached(tmp_path):
    class Flaky:
        name, pointwise, pairwise, chunk_size = "flaky", True, False, 8

        def __init__(self):
            self.fail = True

        def score_batch(self, requests):
            return [None if self.fail else Judgment(1.0, "Rating: [[1]]") for _ in requests]

    judge, cache = Flaky(), JudgmentCache(tmp_path / "c.jsonl")
    assert cached_scores(judge, cache, [(PROMPT, "x")])[0].value is None
    assert len(JudgmentCache(tmp_path / "c.jsonl")) == 0
    judge.fail = False
    assert cached_scores(judge, JudgmentCache(tmp_path / "c.jsonl"), [(PROMPT, "x")])[0].value == 1.0
