"""Samples per prompt with their expected pairs, and the preference prompts they answer (preference-pair tests)."""

import json
from pathlib import Path

# Samples per prompt id (n_to_rank 5). Judged by length, '?' unparseable:
SAMPLES = {
    "p0": ["bb", "a", "cccc", "cccc", "a"],                       # best 2 / worst 1, both by the first-occurrence rule
    "p1": ["same"] * 5,                                           # all identical: dropped before judging
    "p2": ["xx", "yy", "xx", "zz", "yy"],                         # all tied: dropped
    "p3": ["", " ", "abc", "", ""],                               # 4 empty: 1 judged sample left, dropped
    "p4": ["a", "abcde", "abc", "ab", "abcd"],                    # best 1 / worst 0
    "p5": ["?", "abcd", "ab", "?", "abc"],                        # 2 unparseable; best 1 / worst 2
    "p6": ["hello there", "hi", "hey you", "yes", "greetings"],   # best 0 / worst 1
    "p7": ["one", "three", "seventeen", "four", "sixty"],         # best 2 / worst 0
}


EXPECTED_PAIRS = {"p0": ("cccc", "a", 4.0, 1.0), "p4": ("abcde", "a", 5.0, 1.0), "p5": ("abcd", "ab", 4.0, 2.0),
                  "p6": ("hello there", "hi", 11.0, 2.0), "p7": ("seventeen", "one", 9.0, 3.0)}


# distinct non-empty samples of the prompts that are judged (p1 is not): 3 + 3 + 1 + 5 + 4 + 5 + 5
EXPECTED_JUDGE_CALLS = 26


def preference_rows(ids, duplicate=("p6",)):
    rows = []
    for pid in ids:
        k = pid[1:]
        rows.append({"prompt": [{"role": "user", "content": f"Question {k}?"}],
                     "chosen": [{"role": "assistant", "content": f"Original answer {k}."}],
                     "rejected": [{"role": "assistant", "content": f"Bad {k}."}],
                     "prompt_id": pid, "score_chosen": 9.0, "score_rejected": 2.0})
        if pid in duplicate:  # the same prompt with a second pair: never mixed back in
            rows.append({**rows[-1], "chosen": [{"role": "assistant", "content": f"Another answer {k}."}]})
    return rows


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
