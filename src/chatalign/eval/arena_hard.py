"""Arena-Hard-Auto's data, judge prompts, verdict parsing and scores, v0.1 and v2.0 each by its own procedure.

v0.1 (the seed's, the legacy code at lmarena/arena-hard-auto@3071ef9): two games per question, the baseline as A in
game 1 and as B in game 2; a verdict is the single distinct `[[A>>B]]`-style label of the judgment (none: one more
try with "continue your judgment..."; several: unparsed); each game is a battle, `>>` weighted 3, an unparsed game
dropped alone; a Bradley-Terry fit by logistic regression (scikit-learn, no penalty) anchored at the baseline, shown
as the win rate against it; 100 bootstrap rounds of the battles drawn with numpy's generator seeded 42; the 2.5 and
97.5 percentiles. (Upstream anchors the bootstrap fits at gpt-4-0314 whatever the baseline, a slip that changes
nothing with the official baseline; chatalign anchors them at the baseline given.)

v2.0 (upstream HEAD): the last label of any of the config's patterns in the upper-cased judgment, no retry; a question
whose either game has no verdict is dropped; each game gives the model 1, 0.5 or 0 per vote (3 votes for `>>`); the
score is the mean over 100 bootstrap resamples per model, with the 5 and 95 percentiles. Upstream draws the resamples
unseeded; chatalign seeds them (42), so a result repeats. Style control fits Bradley-Terry with the length and markdown
features as upstream does (torch LBFGS).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from chatalign.store import read_jsonl

_PACKAGED = Path(__file__).resolve().parent / "arena_hard_data"
DATA_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[3] / "data" / "arena_hard"
V01, V2 = "arena-hard-v0.1", "arena-hard-v2.0"
BENCHES = (V01, V2)
DEFAULT_JUDGE = {V01: "gpt-4o-2024-05-13", V2: "gpt-4.1"}  # v0.1: seed 004's judge (official results: gpt-4-1106-preview)
BASELINE_V01 = "gpt-4-0314"
RETRY_PROMPT = "continue your judgment and finish by outputting a final verdict label"
WEIGHT = 3  # votes of a "significantly better" verdict
LABEL_TO_SCORE = {"A>B": [1], "A>>B": [1] * WEIGHT, "A=B": [0.5], "A<<B": [0] * WEIGHT, "A<B": [0], "B>A": [0],
                  "B>>A": [0] * WEIGHT, "B=A": [0.5], "B<<A": [1] * WEIGHT, "B<A": [1]}  # v2.0: A's score per vote


def bench_dir(bench: str) -> Path:
    if bench not in BENCHES:
        raise ValueError(f"unknown Arena-Hard bench {bench!r} (expected one of {', '.join(BENCHES)})")
    return DATA_DIR / bench


def load_questions(bench: str, path: str | Path | None = None) -> list[dict]:
    """Questions as {id, category, prompt} (v0.1's legacy question_id/turns or v2.0's uid/prompt)."""
    path = Path(path) if path else bench_dir(bench) / "question.jsonl"
    out = []
    for index, row in enumerate(read_jsonl(path)):
        qid = row.get("uid", row.get("question_id"))
        prompt = row.get("prompt") or (row.get("turns") or [{}])[0].get("content")
        if qid is None or not prompt:
            raise ValueError(f"{path} row {index}: needs 'uid' and 'prompt' (or 'question_id' and 'turns')")
        out.append({"id": qid, "category": row.get("category", bench), "subcategory": row.get("subcategory"),
                    "prompt": prompt})
    return out


def answer_text(row: Mapping[str, Any]) -> str:
    """The answer of an answer-file row in either layout."""
    if "choices" in row:
        return row["choices"][0]["turns"][0]["content"]
    content = row["messages"][-1]["content"]
    return content["answer"] if isinstance(content, dict) else content


def load_answers(path: str | Path) -> tuple[str, dict[Any, dict]]:
    """(model, {question id: row}) of one answer file; one model per file, as upstream's layout has."""
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path}: no answers")
    models = {row.get("model", row.get("model_id")) for row in rows}
    if len(models) != 1:
        raise ValueError(f"{path}: answers of {sorted(map(str, models))}; one model per file")
    return models.pop(), {row.get("uid", row.get("question_id")): row for row in rows}


def judge_settings(bench: str) -> dict[str, Any]:
    """The bench's judge config (prompt template, patterns, attempts) and each category's baseline and system
    prompt, from the shipped upstream files."""
    import yaml

    if bench == V01:
        config = yaml.safe_load((bench_dir(V01) / "judge_config.yaml").read_text())
        return {"template": config["prompt_template"][0], "patterns": [config["regex_pattern"]],
                "attempts": config["number_of_judgment_attempts"], "temperature": config["temperature"],
                "max_tokens": config["max_tokens"],
                "categories": {V01: {"baseline": config["baseline_model"], "system_prompt": config["system_prompt"]}}}
    config = yaml.safe_load((bench_dir(V2) / "arena-hard-v2.0.yaml").read_text())
    categories = json.loads((bench_dir(V2) / "judge_settings.json").read_text())
    return {"template": config["prompt_template"], "patterns": config["regex_patterns"], "attempts": 1,
            "temperature": config["temperature"], "max_tokens": config["max_tokens"], "categories": categories}


def judge_messages(bench: str, settings: Mapping[str, Any], question: dict, answer_a: str,
                   answer_b: str) -> list[dict]:
    """The judge's messages for one game (A shown first), as upstream builds them."""
    if bench == V01:
        user = settings["template"].format(question_1=question["prompt"], answer_1=answer_a, answer_2=answer_b)
    else:
        user = settings["template"].format(QUESTION=question["prompt"], ANSWER_A=answer_a, ANSWER_B=answer_b)
    system = settings["categories"][question["category"]]["system_prompt"]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_verdict(bench: str, judgment: str | None, patterns: Sequence[str]) -> tuple[str | None, bool]:
    """(label or None, whether upstream would ask again): v0.1's single distinct match, v2.0's last match."""
    if not judgment:
        return None, bench == V01
    if bench == V01:
        matches = [m for m in re.compile(patterns[0]).findall(judgment) if m != ""]
        if not matches:
            return None, True
        return (matches[0].strip("\n"), False) if len(set(matches)) == 1 else (None, False)
    for pattern in patterns:
        matches = [m for m in re.compile(pattern).findall(judgment.upper()) if m != ""]
        if matches:
            return matches[-1].strip("\n"), False
    return None, False


# --------------------------------------------------------------------------------------------------------------------
# Judgment files (legacy: question_id, games[{user_prompt, judgment, score}]; current: uid, games[{score, ...}])


def load_judgments(paths: Iterable[str | Path]) -> tuple[list[dict], str | None]:
    """Rows {id, model, category, scores: [game 1 label, game 2 label]} of judgment files in either layout, and the
    one judge that made them (files of two judges are an error: a result never mixes judges)."""
    rows, judges, served = [], set(), set()
    for path in paths:
        for index, row in enumerate(read_jsonl(path)):
            if row.get("judge_model_id"):
                served.add(row["judge_model_id"])
            games = row.get("games")
            qid = row.get("uid", row.get("question_id"))
            if qid is None or not isinstance(games, list) or len(games) != 2 or "model" not in row:
                raise ValueError(f"{path} row {index}: needs 'uid' (or 'question_id'), 'model' and two 'games'")
            judges.add(row.get("judge"))
            rows.append({"id": qid, "model": row["model"], "category": row.get("category"),
                         "baseline": row.get("baseline"),
                         "scores": [game.get("score") if isinstance(game, dict) else None for game in games]})
    judges.discard(None)
    if len(judges) > 1:
        raise ValueError(f"judgments by {', '.join(sorted(judges))}; a result never mixes judges")
    if len(served) > 1:  # one name, two models behind it (an alias that moved)
        raise ValueError(f"judge answered as {', '.join(sorted(served))}; a result never mixes judges")
    return rows, (judges.pop() if judges else None)


# --------------------------------------------------------------------------------------------------------------------
# v0.1: battles, Bradley-Terry (MLE Elo), bootstrap


def battles_v01(rows: Iterable[Mapping[str, Any]], baseline: str, weight: int = WEIGHT) -> list[dict]:
    """Upstream's get_battles_from_row: each parsed game a battle (weight copies for >>), an unparsed one dropped."""
    battles = []
    for row in rows:
        for game, label in enumerate(row["scores"]):
            model_a_is_first = game == 0  # game 1: A is the baseline; game 2: A is the model
            outcome = {"A=B": ("tie", 1), "A>B": ("a", 1), "A>>B": ("a", weight), "B>A": ("b", 1),
                       "B>>A": ("b", weight)}.get(label)
            if outcome is None:
                continue
            side, copies = outcome
            if side == "tie":
                winner = "tie"
            else:
                baseline_won = (side == "a") == model_a_is_first
                winner = "model_a" if baseline_won else "model_b"
            battles += [{"question_id": row["id"], "model_a": baseline, "model_b": row["model"],
                         "winner": winner}] * copies
    return battles


def compute_mle_elo(battles, baseline: str, scale: float = 400, base: float = 10, init: float = 1000):
    """Upstream's compute_mle_elo: ratings by logistic regression on doubled battles (a tie: one win each)."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    models = pd.concat([battles["model_a"], battles["model_b"]]).unique()
    models = pd.Series(np.arange(len(models)), index=models)
    doubled = pd.concat([battles, battles], ignore_index=True)
    n = doubled.shape[0]
    features = np.zeros([n, len(models)])
    features[np.arange(n), models[doubled["model_a"]]] = +math.log(base)
    features[np.arange(n), models[doubled["model_b"]]] = -math.log(base)
    outcomes = np.zeros(n)
    outcomes[doubled["winner"] == "model_a"] = 1.0
    ties = ((doubled["winner"] == "tie") | (doubled["winner"] == "tie (bothbad)")).to_numpy().copy()
    ties[len(ties) // 2:] = False
    outcomes[ties] = 1.0
    # upstream's penalty=None; C=inf is the same unpenalised fit in the scikit-learn that deprecates `penalty`
    fit = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8).fit(features, outcomes)
    ratings = scale * fit.coef_[0] + init
    if baseline in models.index:
        ratings += 1000 - ratings[models[baseline]]
    return pd.Series(ratings, index=models.index)


def win_rate_vs(rating: float, baseline_rating: float, scale: float = 400, base: float = 10) -> float:
    """Upstream's predict_win_rate against the baseline, in percent rounded to 2 decimals (get_win_rate_column)."""
    return round(100 / (1 + base ** ((baseline_rating - rating) / scale)), 2)


def scores_v01(battle_rows: Sequence[dict], baseline: str, rounds: int = 100, seed: int = 42) -> dict[str, dict]:
    """Per model: score (win rate vs the baseline, %), the 2.5/97.5 bootstrap percentiles, battles counted."""
    import numpy as np
    import pandas as pd

    battles = pd.DataFrame(list(battle_rows))
    if battles.empty:
        return {}
    ratings = compute_mle_elo(battles, baseline)
    rng = np.random.RandomState(seed)  # upstream: np.random.seed(42) at import, then battles.sample(...)
    boots = pd.DataFrame([compute_mle_elo(battles.sample(frac=1.0, replace=True, random_state=rng), baseline)
                          for _ in range(rounds)])
    out = {}
    for model in ratings.index:
        if model == baseline:
            continue
        out[model] = {"score": win_rate_vs(ratings[model], ratings[baseline]),
                      "lower": win_rate_vs(np.percentile(boots[model], 2.5), 1000.0),
                      "upper": win_rate_vs(np.percentile(boots[model], 97.5), 1000.0),
                      "battles": int((battles["model_b"] == model).sum())}
    return out


# --------------------------------------------------------------------------------------------------------------------
# v2.0: per-vote scores, bootstrap means, style control


def votes_v2(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Upstream's load_judgments: the model's score per vote (game 2 as is, game 1 mirrored); a question with an
    unparsed game (or a label upstream has no score for) dropped whole."""
    votes = []
    for row in rows:
        first, second = row["scores"]
        if first not in LABEL_TO_SCORE or second not in LABEL_TO_SCORE:
            continue
        scores = LABEL_TO_SCORE[second] + [1 - s for s in LABEL_TO_SCORE[first]]
        votes += [{"id": row["id"], "model": str(row["model"]).split("/")[-1], "category": row["category"],
                   "score": float(s)} for s in scores]
    return votes


def scores_v2(votes: Sequence[dict], baseline: str, rounds: int = 100, seed: int = 42) -> dict[str, dict]:
    """Upstream's print_leaderboard: per model the mean of `rounds` bootstrap means (%), the 5/95 percentiles."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(list(votes))
    if frame.empty:
        return {}
    frame = frame[["model", "score"]]
    rng = np.random.RandomState(seed)
    boots = pd.concat([frame.groupby("model").sample(frac=1.0, replace=True, random_state=rng)
                       .groupby("model")["score"].mean() for _ in range(rounds)])
    out = {}
    for model, values in boots.groupby(level=0):
        out[model] = {"score": 100 * values.mean(), "lower": 100 * values.quantile(0.05),
                      "upper": 100 * values.quantile(0.95),
                      "votes": int((frame["model"] == model).sum())}
    out.pop(baseline, None)
    return out


_CODE_BLOCK = re.compile("```([^`]*)```")


def answer_metadata(text: str, encoder=None) -> dict[str, Any]:
    """Upstream's add_markdown_info: token_len (gpt-4o's tokenizer; None without it) and the markdown counts of
    the text outside code blocks."""
    plain = text
    for block in _CODE_BLOCK.findall(text):
        plain = plain.replace(block, "")
    count = lambda pattern, flags=re.MULTILINE: len(re.findall(pattern, plain, flags))  # noqa: E731
    return {"token_len": len(encoder.encode(text, disallowed_special=())) if encoder is not None else None,
            "header_count": {f"h{i}": count(rf"^#{{{i}}}\s") for i in range(1, 7)},
            "list_count": {"ordered": count(r"^\s*\d+\.\s"), "unordered": count(r"^\s*[-*+]\s")},
            "bold_count": {"**": count(r"\*\*[^*\n]+\*\*", 0), "__": count(r"__[^_\n]+__", 0)}}


def gpt4o_encoder():
    """tiktoken's o200k_base (what upstream counts tokens with), or None where it cannot be loaded (offline)."""
    try:
        import tiktoken

        return tiktoken.encoding_for_model("gpt-4o")
    except Exception:
        return None


def style_features(model_meta: Mapping[str, Any], baseline_meta: Mapping[str, Any]) -> list[float] | None:
    """Upstream's four style features of one battle (before normalisation): the length difference ratio and the
    header, list and bold density differences; None where a token length is missing."""
    def flat(meta):
        if meta.get("token_len") is None:
            return None
        return [meta["token_len"], *(sum(meta[k].values()) for k in ("header_count", "list_count", "bold_count"))]

    model, base = flat(model_meta), flat(baseline_meta)
    if model is None or base is None:
        return None
    features = [(model[0] - base[0]) / (model[0] + base[0])]
    for m, b in zip(model[1:], base[1:], strict=True):
        dm, db = m / (model[0] + 1), b / (base[0] + 1)
        features.append((dm - db) / (dm + db + 1))
    return features


def style_controlled_v2(votes: Sequence[dict], features: Sequence[Sequence[float]], baseline: str,
                        controls: Sequence[str] = ("length", "markdown"), rounds: int = 100,
                        seed: int = 42) -> dict[str, dict]:
    """Upstream's print_leaderboard_with_style_features: Bradley-Terry with the style features (normalised), fitted
    by LBFGS on `rounds` bootstrap resamples (seeded here); per model the median win rate against the baseline and
    the 5/95 percentiles, and the style coefficients."""
    import numpy as np
    import torch

    models = sorted({v["model"] for v in votes} | {baseline})
    index = {m: i for i, m in enumerate(models)}
    one_hot = torch.zeros(len(votes), len(models))
    for row, vote in enumerate(votes):
        one_hot[row, index[vote["model"]]] = 1
        one_hot[row, index[baseline]] = -1
    style = torch.tensor(list(features), dtype=torch.float32)
    style = (style - style.mean(dim=0)) / style.std(dim=0)
    keep = ([0] if "length" in controls else []) + ([1, 2, 3] if "markdown" in controls else [])
    if not keep:
        raise ValueError(f"style control needs 'length' and/or 'markdown', got {list(controls)}")
    design = torch.cat([one_hot, style[:, keep]], dim=1)
    outcomes = torch.tensor([v["score"] for v in votes], dtype=torch.float32)
    rng = np.random.RandomState(seed)
    picks = rng.randint(low=0, high=design.shape[0], size=(rounds, design.shape[0]))
    coefs = torch.stack([_fit_bt(design[idx], outcomes[idx]) for idx in picks])
    model_coefs = coefs[:, :len(models)]
    exp = torch.exp(model_coefs)
    probs = exp / (exp + exp[:, [index[baseline]]])
    out = {m: {"score": 100 * probs[:, i].quantile(0.5).item(), "lower": 100 * probs[:, i].quantile(0.05).item(),
               "upper": 100 * probs[:, i].quantile(0.95).item()} for m, i in index.items() if m != baseline}
    names = ["length", "header", "list", "bold"]
    out["_style_coefficients"] = {names[k]: coefs[:, len(models) + j].quantile(0.5).item()
                                  for j, k in enumerate(keep)}
    return out


def _fit_bt(design, outcomes, lr: float = 0.1, tol: float = 1e-9, max_epochs: int = 50):
    """Upstream's fit_pairwise_model (loss "bt"): coefficients from 0.5, LBFGS on the summed logistic loss."""
    import torch

    coefs = torch.nn.Parameter(torch.full((design.shape[1],), 0.5))
    optimizer = torch.optim.LBFGS([coefs], lr=lr, max_iter=max_epochs, tolerance_grad=tol, tolerance_change=tol)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(design @ coefs, outcomes, reduction="sum")
        loss.backward()
        return loss

    optimizer.step(closure)
    return coefs.detach()


def bench_scores(bench: str, rows: Sequence[dict], baselines: Mapping[str, str], seed: int = 42,
                 rounds: int = 100) -> dict[str, dict[str, dict]]:
    """{category: {model: score, lower, upper, ...}} by the bench's own procedure; `baselines` by category."""
    if bench == V01:
        (baseline,) = set(baselines.values())
        return {V01: scores_v01(battles_v01(rows, baseline), baseline, rounds, seed)}
    out = {}
    for category in sorted({r["category"] for r in rows}):
        if category not in baselines:
            raise ValueError(f"judgments of category {category!r}, whose baseline is not known")
        votes = votes_v2([r for r in rows if r["category"] == category])
        out[category] = scores_v2(votes, baselines[category], rounds, seed)
    return out


def style_scores(rows: Sequence[dict], category: str, baseline: str, metadata: Mapping[str, Mapping[Any, dict]],
                 controls: Sequence[str], seed: int = 42) -> tuple[dict[str, dict] | None, str | None]:
    """The style-controlled scores of a v2.0 category, or (None, why) where an answer's metadata is missing."""
    votes = votes_v2([r for r in rows if r["category"] == category])
    features = []
    for vote in votes:
        model_meta = metadata.get(vote["model"], {}).get(vote["id"])
        base_meta = metadata.get(baseline, {}).get(vote["id"])
        found = style_features(model_meta, base_meta) if model_meta and base_meta else None
        if found is None:
            return None, (f"no style metadata (token_len from gpt-4o's tokenizer, markdown counts) for "
                          f"{vote['model'] if not model_meta or model_meta.get('token_len') is None else baseline}'s "
                          f"answer to {vote['id']}; tiktoken's o200k_base must load when the answers are written")
        features.append(found)
    return style_controlled_v2(votes, features, baseline, controls, seed=seed), None


def answer_token_len(row: Mapping[str, Any]) -> int | None:
    """The token count an answer file records (v0.1: the turn's token_len; v2.0: metadata.token_len)."""
    if "choices" in row:
        return row["choices"][0]["turns"][0].get("token_len")
    return (row.get("metadata") or {}).get("token_len")
