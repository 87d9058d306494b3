"""Small preference (prompt, chosen, rejected) and unpaired (prompt, completion, label) rows for the trainer tests:
prompts and completions of many lengths, so that padding and truncation show."""

WORDS = ["cat", "dog", "sun", "sea", "tree", "rain", "bird", "fish", "moon", "star", "road", "book"]


def preference_rows(n, scores=False):
    """Pairs whose prompts and completions all differ in length (chosen longer or shorter than rejected)."""
    rows = []
    for i in range(n):
        word = WORDS[i % len(WORDS)]
        row = {
            "prompt": [{"role": "user", "content": f"Write {' very' * (i % 4)} short lines about the {word}."}],
            "chosen": [{"role": "assistant", "content": f"The {word} is" + " here" * (1 + 3 * (i % 3)) + "."}],
            "rejected": [{"role": "assistant", "content": f"No {word}" + " there" * (5 - i % 5) + "."}],
            "prompt_id": f"p{i}",
        }
        if scores:
            row.update(score_chosen=7.0, score_rejected=5.0)
        rows.append(row)
    return rows


def unpaired_rows(n):
    return [{"prompt": p["prompt"], "completion": p["chosen" if i % 3 else "rejected"], "label": bool(i % 3)}
            for i, p in enumerate(preference_rows(n))]
