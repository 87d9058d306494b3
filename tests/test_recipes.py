"""Every shipped recipe parses with its script's parser, with no unknown key and the right types."""

from pathlib import Path

import pytest
from conftest import REPO, load_script

RECIPES = sorted((REPO / "recipes").glob("*/*/config_*.yaml"))


SCRIPT_FOR_TASK = {"sft": "run_sft", "dpo": "run_dpo", "kto": "run_kto", "selfplay": "run_kto"}


# GPU recipes ask for bf16; TrainingArguments refuses bf16 on a CPU-only machine, so validate them as CPU runs.
CPU_OVERRIDES = ["--bf16=false", "--use_cpu=true"]


def test_recipes_exist_for_every_task():
    tasks = {(p.parts[-3], p.parent.name) for p in RECIPES}
    for model in ("smollm2-135m",):
        for task in ("sft", "dpo", "kto"):
            assert (model, task) in tasks
    assert {"zephyr-7b-beta", "gemma-2b", "gemma-7b-it", "mistral-7b"} <= {m for m, _ in tasks}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_recipe_parses(recipe: Path):
    script = SCRIPT_FOR_TASK[recipe.parent.name]
    parsed = load_script(script).make_parser().parse([str(recipe), *CPU_OVERRIDES])
    model_args = parsed[0]
    assert model_args.model_name_or_path
    header = recipe.read_text().splitlines()[0]
    assert header.startswith("# "), f"{recipe} has no header comment saying how to run it"
    assert f"scripts/{script}.py" in recipe.read_text() or "launch.slurm" in recipe.read_text()
