"""Every shipped recipe parses with its script's parser, with no unknown key and the right types; names models, data
and templates that exist, are produced by an earlier step of a chain, or are hub ids; and passes its script's checks."""

import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, load_script

from chatalign.data.templates import resolve_chat_template

ALL_RECIPES = sorted((REPO / "recipes").glob("*/*/config_*.yaml"))
# Analysis recipes configure one script's own dataclasses (no training run): parsed and checked apart below.
ANALYSIS_SCRIPT_FOR_TASK = {"dset_prediction": "dset_prediction", "predict_preference": "predict_preference"}
RECIPES = [p for p in ALL_RECIPES if p.parent.name not in ANALYSIS_SCRIPT_FOR_TASK]
ANALYSIS_RECIPES = [p for p in ALL_RECIPES if p.parent.name in ANALYSIS_SCRIPT_FOR_TASK]
SCRIPT_FOR_TASK = {"sft": "run_sft", "dpo": "run_dpo", "kto": "run_kto", "selfplay": "run_kto",
                   "lm_reward": "compute_lm_reward", "importance_weight": "compute_importance_weight", "rl": "run_rl"}
# GPU recipes ask for bf16; TrainingArguments refuses bf16 on a CPU-only machine, so validate them as CPU runs.
CPU_OVERRIDES = ["--bf16=false", "--use_cpu=true"]
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Folders the chain's earlier steps write: prepare_model (models/), training (output_dir), self-play (generated/).
PRODUCED_BY_EARLIER_STEPS = {"models/smollm2-135m-instruct"} | {
    yaml.safe_load(p.read_text()).get("output_dir") for p in ALL_RECIPES}


def where_is(name: str) -> str:
    """'local', 'produced' (by an earlier step), 'hub', or 'missing' for a model or dataset a recipe names."""
    if (REPO / name).exists():
        return "local"
    if name in PRODUCED_BY_EARLIER_STEPS or name.startswith("generated/"):
        return "produced"
    local_folder = name.split("/")[0] in ("data", "models", "outputs", "generated", "recipes")
    return "hub" if HUB_ID.fullmatch(name) and not local_folder else "missing"


def test_recipes_exist_for_every_task():
    tasks = {(p.parts[-3], p.parent.name) for p in RECIPES}
    for model in ("smollm2-135m",):
        for task in ("sft", "dpo", "kto"):
            assert (model, task) in tasks
    assert {"zephyr-7b-beta", "gemma-2b", "gemma-7b-it", "mistral-7b"} <= {m for m, _ in tasks}


def test_where_is_tells_a_missing_local_path_from_a_hub_id():
    assert where_is("data/llama_factory_demo/dpo_en_demo.json") == "local"
    assert where_is("HuggingFaceH4/ultrachat_200k") == where_is("google/gemma-2b") == "hub"
    assert where_is("data/no_such_file.json") == where_is("outputs/never-written") == where_is("x") == "missing"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_recipe_parses_names_what_exists_and_passes_its_checks(recipe: Path):
    script_name = SCRIPT_FOR_TASK[recipe.parent.name]
    script = load_script(script_name)
    parsed = script.make_parser().parse([str(recipe), *CPU_OVERRIDES])
    model_args, data_args, training_args, script_args = parsed[:4]
    text = recipe.read_text()
    assert text.splitlines()[0].startswith("# "), f"{recipe} has no header comment saying how to run it"
    assert f"scripts/{script_name}.py" in text or "launch.slurm" in text
    # What it names exists, is written by an earlier step of its chain, or is a hub id.
    named = {"model_name_or_path": model_args.model_name_or_path,
             "ref_model_name_or_path": getattr(script_args, "ref_model_name_or_path", None),
             **{f"dataset_mixer[{source}]": source for source in data_args.dataset_mixer},
             **{f"candidate_models[{c['name']}]": c["model_name_or_path"]
                for c in getattr(parsed[-1], "candidate_models", None) or []}}
    assert {key: name for key, name in named.items() if name and where_is(name) == "missing"} == {}
    if data_args.chat_template:
        resolve_chat_template(data_args.chat_template)
    if isinstance(data_args.dataset_splits, dict):
        assert set(data_args.dataset_splits) == set(data_args.dataset_mixer)
    assert training_args.output_dir and where_is(training_args.output_dir) != "hub"
    # Its keys are consistent: the checks the script runs before loading anything pass.
    if script_name in ("run_dpo", "compute_lm_reward", "compute_importance_weight"):
        from chatalign.train.dpo.arguments import check_dpo_arguments

        check_dpo_arguments(training_args, data_args, script_args)
    elif script_name == "run_kto":
        from chatalign.train.kto import check_kto_arguments

        check_kto_arguments(script_args, training_args, data_args)
    elif script_name == "run_rl":
        from chatalign.train.rl import check_rl_run

        check_rl_run(script_args, training_args, data_args)
    # Preference training is padding-free in every shipped recipe (issue 15: the fast path is the default).
    if recipe.parent.name in ("dpo", "kto"):
        assert (training_args if script_name == "run_dpo" else script_args).padding_free, f"{recipe}: padding_free"
    # alignment-handbook and LION give zephyr conversations an empty system turn; so do its recipes.
    if recipe.parts[-3] == "zephyr-7b-beta":
        assert data_args.chat_template == "zephyr" and data_args.auto_insert_empty_system_msg


RL_RECIPES = [p for p in RECIPES if p.parent.name == "rl"]


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
@pytest.mark.parametrize("recipe", RL_RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_rl_recipe_parses_under_each_algorithm(recipe: Path, algorithm: str):
    """Each RL recipe's header offers --rl_algorithm=rloo: its keys must all be RLOOConfig's too (none GRPO-only)."""
    from chatalign.train.rl import RL_ALGORITHMS, check_rl_run, requested_algorithm

    assert set(RL_ALGORITHMS) == {"grpo", "rloo"}  # a new algorithm gets its parametrization here
    argv = [str(recipe), f"--rl_algorithm={algorithm}", *CPU_OVERRIDES]
    assert requested_algorithm(argv) == algorithm
    _, data_args, training_args, script_args, _ = load_script("run_rl").make_parser(algorithm).parse(argv)
    assert script_args.rl_algorithm == algorithm
    assert type(training_args).__name__ == {"grpo": "GRPOConfig", "rloo": "RLOOConfig"}[algorithm]
    check_rl_run(script_args, training_args, data_args)


# Folders a user makes by hand, as the recipe's header says (a converted checkpoint, other runs' id files).
USER_PRODUCED = {"models/starling-rm-7b-alpha-seqcls"}


@pytest.mark.parametrize("recipe", ANALYSIS_RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_analysis_recipe_parses_and_names_what_exists(recipe: Path):
    script_name = ANALYSIS_SCRIPT_FOR_TASK[recipe.parent.name]
    parsed = load_script(script_name).make_parser().parse([str(recipe)])
    text = recipe.read_text()
    assert text.splitlines()[0].startswith("# ") and f"scripts/{script_name}.py" in text
    values = {k: v for config in parsed for k, v in vars(config).items()}
    named = {"model_name_or_path": values.get("model_name_or_path"), "dataset_name": values.get("dataset_name"),
             **{f"dataset_to_test[{d}]": d for d in values.get("dataset_to_test") or {}}}
    missing = {key: name for key, name in named.items()
               if name and name not in USER_PRODUCED and where_is(name) == "missing"}
    assert missing == {}
    assert values["output_dir"] and where_is(values["output_dir"]) != "hub"


# recipes/blocks.yaml holds Open-Assistant-style named blocks (`--configs defaults <model>`), not one recipe.
BLOCKS = REPO / "recipes" / "blocks.yaml"
MODEL_BLOCKS = [name for name in yaml.safe_load(BLOCKS.read_text()) if name != "defaults"]


@pytest.mark.parametrize("block", MODEL_BLOCKS)
def test_each_model_block_composes_with_the_defaults_and_names_what_exists(block):
    text = BLOCKS.read_text()
    assert text.splitlines()[0].startswith("# ") and "scripts/run_sft.py recipes/blocks.yaml --configs defaults" in text
    parser = load_script("run_sft").make_parser()
    model_args, data_args, training_args, _ = parser.parse([str(BLOCKS), "--configs", "defaults", block,
                                                            *CPU_OVERRIDES])
    assert parser.sources["model_name_or_path"] == f"block '{block}' of '{BLOCKS}'"
    named = {"model_name_or_path": model_args.model_name_or_path, **{s: s for s in data_args.dataset_mixer}}
    assert {key: name for key, name in named.items() if where_is(name) == "missing"} == {}
    if data_args.chat_template:
        resolve_chat_template(data_args.chat_template)
    assert training_args.output_dir and where_is(training_args.output_dir) != "hub"
