"""recipes/accelerate_configs, recipes/launch.slurm and chatalign.launch.

The accelerate configs are loaded with accelerate's own loader and pushed through `accelerate launch`'s argument
validation and environment preparation, so a misspelt key or value fails here and not on a cluster. launch.slurm runs
through bash against a temporary recipe tree, with Slurm faked by environment variables and tiny `scontrol`, `srun`,
`nvidia-smi` and `accelerate` scripts first on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from chatalign import launch
from chatalign.launch import LaunchError, Topology

REPO = Path(__file__).resolve().parents[1]


ACCELERATE_CONFIGS = REPO / "recipes" / "accelerate_configs"


LAUNCH_SLURM = REPO / "recipes" / "launch.slurm"


EXPECTED_CONFIGS = {
    "multi_gpu": "MULTI_GPU",
    "deepspeed_zero1": "DEEPSPEED",
    "deepspeed_zero2": "DEEPSPEED",
    "deepspeed_zero3": "DEEPSPEED",
    "fsdp": "FSDP",
}


RECIPE = """\
model_name_or_path: models/tiny
dataset_mixer:
  data/train.jsonl: 1.0
learning_rate: 2.0e-5
bf16: true
per_device_train_batch_size: 2
gradient_accumulation_steps: 4
output_dir: outputs/tiny-sft
"""


@pytest.fixture
def repo(tmp_path) -> Path:
    """recipes/tiny/sft/config_{full,lora}.yaml, the real accelerate configs and a scripts/run_sft.py stand-in."""
    root = tmp_path / "repo"
    (root / "recipes" / "tiny" / "sft").mkdir(parents=True)
    (root / "recipes" / "tiny" / "sft" / "config_full.yaml").write_text(RECIPE)
    (root / "recipes" / "tiny" / "sft" / "config_lora.yaml").write_text(RECIPE + "use_peft: true\n")
    shutil.copytree(ACCELERATE_CONFIGS, root / "recipes" / "accelerate_configs")
    (root / "scripts").mkdir()
    (root / "scripts" / "run_sft.py").write_text("raise SystemExit('not run in these tests')\n")
    return root


def _script(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)


@pytest.fixture
def fake_bin(tmp_path) -> Path:
    """scontrol, nvidia-smi, srun and accelerate stand-ins."""
    folder = tmp_path / "bin"
    folder.mkdir()
    _script(folder, "scontrol", """\
        [[ "$1 $2" == "show hostnames" && $# == 3 ]] || { echo "fake scontrol: unexpected arguments: $*" >&2; exit 1; }
        case "$3" in
            "gpu-[001-002]") printf 'gpu-001\\ngpu-002\\n' ;;
            *) echo "$3" ;;
        esac
        """)
    _script(folder, "nvidia-smi", """\
        [[ "$1" == "-L" ]] || exit 1
        echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"
        echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-1)"
        """)
    # Runs the command once per node, one after the other, each with its own SLURM_PROCID, as srun would in parallel.
    _script(folder, "srun", """\
        echo "srun $*" >&2
        nodes=1
        while [[ "$1" == --* ]]; do
            case "$1" in --nodes=*) nodes=${1#--nodes=} ;; esac
            shift
        done
        for ((rank = 0; rank < nodes; rank++)); do SLURM_PROCID=$rank "$@" || exit $?; done
        """)
    _script(folder, "accelerate", 'echo "accelerate $* (cwd $(basename "$PWD"))"\n')
    return folder


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "CHATALIGN_")) and k not in ("CUDA_VISIBLE_DEVICES", "PYTHONPATH")}
    env.update(extra)
    return env


def run_launch_slurm(args: list[str], repo: Path, fake_bin: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = _clean_env(CHATALIGN_REPO_ROOT=str(repo), PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
                          PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(LAUNCH_SLURM), *args], capture_output=True, text=True, env=full_env,
                          cwd=repo.parent, timeout=60)


SLURM_ONE_NODE = dict(SLURM_JOB_ID="41", SLURM_NNODES="1", SLURM_JOB_NODELIST="gpu-007", SLURM_PROCID="0",
                      SLURM_GPUS_ON_NODE="8")


SLURM_TWO_NODES = dict(SLURM_JOB_ID="42", SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu-[001-002]", SLURM_PROCID="0",
                       SLURM_GPUS_ON_NODE="8")


def _launch_args(config: Path):
    """Parse and validate `accelerate launch --config_file CONFIG ...` for node 1 of 2, as accelerate does."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    args = parser.parse_args([
        "--config_file", str(config), "--gradient_accumulation_steps", "4", "--num_machines", "2",
        "--num_processes", "16", "--machine_rank", "1", "--main_process_ip", "gpu-001", "--main_process_port", "29500",
        "scripts/run_sft.py", "recipe.yaml",
    ])
    args, defaults, _ = _validate_launch_command(args)
    return parser, args, defaults


def _launch_env(args, defaults) -> dict[str, str]:
    """The environment `accelerate launch` hands the training processes."""
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def test_the_five_accelerate_configs_are_shipped():
    assert {p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")} >= set(EXPECTED_CONFIGS)


@pytest.mark.parametrize("name", sorted(EXPECTED_CONFIGS))
def test_accelerate_config_loads_and_every_key_is_a_launch_option(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    path = ACCELERATE_CONFIGS / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    config = load_config_from_file(str(path))  # raises on unknown top-level keys
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == EXPECTED_CONFIGS[name]
    assert config.mixed_precision == "bf16"
    assert raw["compute_environment"] == "LOCAL_MACHINE"

    # Nested keys are copied onto `accelerate launch` options (fsdp_config keys with an fsdp_ prefix); one that is
    # no option is silently ignored, so check them all.
    parser, args, defaults = _launch_args(path)
    options = {action.dest for action in parser._actions}
    for key in raw.get("deepspeed_config", {}):
        assert key in options, f"{name}: deepspeed_config.{key} is no accelerate launch option"
    for key in raw.get("fsdp_config", {}):
        assert (key if key.startswith("fsdp") else f"fsdp_{key}") in options, f"{name}: fsdp_config.{key}"
    # The launcher's topology wins over the placeholders in the file.
    assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 16, 1)
    assert [args.use_deepspeed, args.use_fsdp, args.multi_gpu] == [
        EXPECTED_CONFIGS[name] == "DEEPSPEED", EXPECTED_CONFIGS[name] == "FSDP", EXPECTED_CONFIGS[name] == "MULTI_GPU"]


@pytest.mark.parametrize("name, stage", [("deepspeed_zero1", "1"), ("deepspeed_zero2", "2"), ("deepspeed_zero3", "3")])
def test_deepspeed_configs_reach_the_training_processes(name, stage):
    _, args, defaults = _launch_args(ACCELERATE_CONFIGS / f"{name}.yaml")
    env = _launch_env(args, defaults)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == stage
    assert env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] == "4"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    if stage == "3":
        # -> zero_optimization.stage3_gather_16bit_weights_on_model_save, which Trainer.save_model needs to write
        # full weights under ZeRO-3.
        assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"
        assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"


def test_zero3_plugin_gathers_16bit_weights_on_save(monkeypatch):
    pytest.importorskip("deepspeed")
    from accelerate.utils import DeepSpeedPlugin

    _, args, defaults = _launch_args(ACCELERATE_CONFIGS / "deepspeed_zero3.yaml")
    for key, value in _launch_env(args, defaults).items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 3
    assert plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_fsdp_config_full_shard_with_a_full_state_dict(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import ShardingStrategy, StateDictType

    _, args, defaults = _launch_args(ACCELERATE_CONFIGS / "fsdp.yaml")
    env = _launch_env(args, defaults)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == env["FSDP_SYNC_MODULE_STATES"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # Broadcasting module states needs a GPU; everything else is built as in training.
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 1
    assert plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    # transformers' Trainer.save_model writes the final model under FSDP only when this holds.
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)


def test_recipe_values_typed_and_defaulted_like_training_arguments(tmp_path):
    recipe = tmp_path / "config.yaml"
    recipe.write_text("learning_rate: 1.0e-5\nbf16: true\ndataset_mixer: {a.jsonl: 0.5}\n")
    values = launch.read_recipe(recipe)
    # TrainingArguments' defaults (TRL's configs keep them); importing it here would cost seconds.
    assert values["gradient_accumulation_steps"] == 1
    assert values["per_device_train_batch_size"] == 8
    assert values["learning_rate"] == 1.0e-5
    assert values["bf16"] is True
    assert values["dataset_mixer"] == {"a.jsonl": 0.5}


@pytest.mark.parametrize("overrides, expected", [
    ([], 4),
    (["--gradient_accumulation_steps=8"], 8),
    (["--gradient_accumulation_steps", "16"], 16),
    (["--gradient-accumulation-steps=2"], 2),
    (["--learning_rate=1e-6", "--gradient_accumulation_steps=3", "--output_dir", "out"], 3),
])
def test_gradient_accumulation_from_recipe_then_overrides(repo, overrides, expected):
    recipe = repo / "recipes/tiny/sft/config_full.yaml"
    assert launch.recipe_value(recipe, "gradient_accumulation_steps", overrides) == expected


def test_yaml_files_at_the_head_of_the_overrides_are_recipes_too(repo):
    (repo / "recipes/tiny/sft/big_batch.yaml").write_text("gradient_accumulation_steps: 32\nmax_steps: 5\n")
    recipe = repo / "recipes/tiny/sft/config_full.yaml"
    values = launch.read_recipe(recipe, ["recipes/tiny/sft/big_batch.yaml", "--seed=3"], base=repo)
    assert (values["gradient_accumulation_steps"], values["max_steps"], values["seed"]) == (32, 5, 3)
    command, _ = launch.build_command("tiny", "sft", "full", "fsdp", ["recipes/tiny/sft/big_batch.yaml"],
                                      Topology(1, 1, 0, "127.0.0.1", 29500), repo)
    assert command[command.index("--gradient_accumulation_steps") + 1] == "32"
    assert command[-3:] == ["scripts/run_sft.py", "recipes/tiny/sft/config_full.yaml", "recipes/tiny/sft/big_batch.yaml"]


def test_recipe_value_of_a_run_args_file(tmp_path):
    run_args = tmp_path / "run_args.yaml"
    run_args.write_text(yaml.safe_dump({"chatalign": {"script": "run_sft.py"},
                                        "args": {"gradient_accumulation_steps": 6, "output_dir": "o"}}))
    assert launch.recipe_value(run_args, "gradient_accumulation_steps") == 6
    assert launch.recipe_value(run_args, "output_dir") == "o"


def test_recipe_value_errors_name_the_key(repo, tmp_path):
    recipe = repo / "recipes/tiny/sft/config_full.yaml"
    with pytest.raises(LaunchError, match="key 'gradient_accumulation_steps' in the command line: expected int"):
        launch.recipe_value(recipe, "gradient_accumulation_steps", ["--gradient_accumulation_steps=many"])
    with pytest.raises(LaunchError, match="key 'gradient_accumulation_steps' in '.*bad.yaml': expected int"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("gradient_accumulation_steps: 2.5\n")
        launch.recipe_value(bad, "gradient_accumulation_steps")
    with pytest.raises(LaunchError, match="key 'lora_r' is not set in recipe"):
        launch.recipe_value(recipe, "lora_r")
    with pytest.raises(LaunchError, match="recipe file '.*missing.yaml' does not exist"):
        launch.recipe_value(tmp_path / "missing.yaml", "gradient_accumulation_steps")


def test_recipe_value_command_line(repo, capsys):
    recipe = str(repo / "recipes/tiny/sft/config_full.yaml")
    assert launch.main(["recipe-value", recipe, "gradient_accumulation_steps"]) == 0
    assert launch.main(["recipe-value", recipe, "gradient_accumulation_steps",
                        "--overrides=--gradient_accumulation_steps=12"]) == 0
    assert launch.main(["recipe-value", recipe, "bf16"]) == 0
    assert launch.main(["recipe-value", recipe, "output_dir"]) == 0
    assert capsys.readouterr().out == "4\n12\ntrue\noutputs/tiny-sft\n"
    assert launch.main(["recipe-value", recipe, "lora_r"]) == 1
    assert capsys.readouterr().err == f"chatalign.launch: error: key 'lora_r' is not set in recipe '{recipe}' nor in its overrides\n"


def test_topology_outside_slurm_without_gpus(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert launch.detect_topology({"PATH": str(empty)}) == Topology(1, 1, 0, "127.0.0.1", 29500)


def test_topology_counts_gpus_visible_then_nvidia_smi(fake_bin):
    assert launch.detect_topology({"PATH": str(fake_bin)}).gpus_per_node == 2
    assert launch.detect_topology({"PATH": str(fake_bin), "CUDA_VISIBLE_DEVICES": "0,1,2"}).gpus_per_node == 3
    assert launch.detect_topology({"PATH": str(fake_bin), "SLURM_GPUS_PER_NODE": "h100:4"}).gpus_per_node == 4
    assert launch.detect_topology({"PATH": str(fake_bin), "SLURM_GPUS_PER_NODE": "4",
                                   "SLURM_GPUS_ON_NODE": "8"}).gpus_per_node == 8


def test_topology_from_slurm(fake_bin):
    env = dict(SLURM_TWO_NODES, PATH=str(fake_bin), SLURM_PROCID="1")
    assert launch.detect_topology(env) == Topology(2, 8, 1, "gpu-001", 29500)
    explicit = launch.detect_topology(env, num_nodes=4, gpus_per_node=2, node_rank=3, main_address="m", main_port=6000)
    assert explicit == Topology(4, 2, 3, "m", 6000)
    assert explicit.num_processes == 8


def test_topology_errors(tmp_path, fake_bin):
    no_tools = str(tmp_path)
    with pytest.raises(LaunchError, match="2 nodes but no main address"):
        launch.detect_topology(dict(SLURM_TWO_NODES, PATH=no_tools))
    with pytest.raises(LaunchError, match=r"node rank 2 is outside 0..1 for 2 node\(s\)"):
        launch.detect_topology(dict(SLURM_TWO_NODES, PATH=str(fake_bin), SLURM_PROCID="2"))
    with pytest.raises(LaunchError, match="environment variable SLURM_NNODES='two' is not an integer"):
        launch.detect_topology({"PATH": no_tools, "SLURM_NNODES": "two"})
    with pytest.raises(LaunchError, match="main port 70000"):
        launch.detect_topology({"PATH": no_tools}, main_port=70000)


def test_build_command_two_nodes(repo):
    topology = Topology(2, 8, 1, "gpu-001", 29500)
    command, values = launch.build_command("tiny", "sft", "full", "deepspeed_zero3", ["--learning_rate=1e-5"],
                                           topology, repo)
    assert command == [
        "accelerate", "launch", "--config_file", "recipes/accelerate_configs/deepspeed_zero3.yaml",
        "--gradient_accumulation_steps", "4", "--num_machines", "2", "--num_processes", "16", "--machine_rank", "1",
        "--main_process_ip", "gpu-001", "--main_process_port", "29500",
        "scripts/run_sft.py", "recipes/tiny/sft/config_full.yaml", "--learning_rate=1e-5",
    ]
    assert launch.batch_summary(topology, values) == (
        "2 node(s) x 8 GPU(s) = 16 process(es); global batch = 16 x 2 per device x 4 accumulation = 128")


@pytest.mark.parametrize("names, message", [
    (("tiny", "sft", "qlora", "fsdp"),
     "recipe 'recipes/tiny/sft/config_qlora.yaml' not found under {root}: tiny/sft has: full, lora"),
    (("zephyr", "sft", "full", "fsdp"),
     "recipe 'recipes/zephyr/sft/config_full.yaml' not found under {root}: no recipes for model 'zephyr' "
     "(models: tiny)"),
    (("tiny", "sft", "full", "zero3"),
     "accelerate config 'recipes/accelerate_configs/zero3.yaml' not found under {root}; accelerators: "
     "deepspeed_zero1, deepspeed_zero2, deepspeed_zero3, fsdp, multi_gpu"),
])
def test_missing_files_are_named_with_what_exists(repo, names, message):
    with pytest.raises(LaunchError) as err:
        launch.build_command(*names, [], Topology(1, 1, 0, "127.0.0.1", 29500), repo)
    assert str(err.value) == message.format(root=repo)


def test_missing_training_script(repo):
    (repo / "recipes/tiny/dpo").mkdir()
    (repo / "recipes/tiny/dpo/config_full.yaml").write_text("beta: 0.1\n")
    with pytest.raises(LaunchError) as err:
        launch.build_command("tiny", "dpo", "full", "fsdp", [], Topology(1, 1, 0, "127.0.0.1", 29500), repo)
    assert str(err.value) == f"training script 'scripts/run_dpo.py' for task 'dpo' not found under {repo}; tasks: sft"


def test_srun_command_starts_one_launcher_per_node(repo):
    args = launch.make_parser().parse_args(["run", "tiny", "sft", "full", "fsdp", "--overrides=--seed=1"])
    assert launch.srun_command(args, Topology(2, 8, 0, "gpu-001", 29500), repo) == [
        "srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--wait=60",
        sys.executable, "-m", "chatalign.launch", "run", "tiny", "sft", "full", "fsdp", "--overrides=--seed=1",
        "--num_nodes=2", "--gpus_per_node=8", "--main_address=gpu-001", "--main_port=29500",
        f"--repo_root={repo}", "--node_step",
    ]


def test_slurm_dry_run_one_node(repo, fake_bin):
    done = run_launch_slurm(["--dry-run", "tiny", "sft", "full", "deepspeed_zero3",
                             "--learning_rate=1e-5 --hub_model_id='me/tiny sft'"], repo, fake_bin, **SLURM_ONE_NODE)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero3.yaml "
        "--gradient_accumulation_steps 4 --num_machines 1 --num_processes 8 --machine_rank 0 "
        "--main_process_ip gpu-007 --main_process_port 29500 "
        "scripts/run_sft.py recipes/tiny/sft/config_full.yaml --learning_rate=1e-5 '--hub_model_id=me/tiny sft'\n"
    )
    assert "global batch = 8 x 2 per device x 4 accumulation = 64" in done.stderr


def test_slurm_dry_run_two_nodes_rank_one(repo, fake_bin):
    env = dict(SLURM_TWO_NODES, SLURM_PROCID="1")
    done = run_launch_slurm(["tiny", "sft", "lora", "fsdp", "--gradient_accumulation_steps 2", "--dry-run"],
                            repo, fake_bin, **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml "
        "--gradient_accumulation_steps 2 --num_machines 2 --num_processes 16 --machine_rank 1 "
        "--main_process_ip gpu-001 --main_process_port 29500 "
        "scripts/run_sft.py recipes/tiny/sft/config_lora.yaml --gradient_accumulation_steps 2\n"
    )


def test_plain_bash_outside_slurm_counts_gpus_and_runs_accelerate(repo, fake_bin):
    done = run_launch_slurm(["tiny", "sft", "full", "multi_gpu"], repo, fake_bin)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml "
        "--gradient_accumulation_steps 4 --num_machines 1 --num_processes 2 --machine_rank 0 "
        "--main_process_ip 127.0.0.1 --main_process_port 29500 "
        "scripts/run_sft.py recipes/tiny/sft/config_full.yaml (cwd repo)\n"
    )


def test_two_node_job_starts_one_accelerate_per_node_with_its_rank(repo, fake_bin):
    done = run_launch_slurm(["tiny", "sft", "full", "deepspeed_zero3", "--seed=7"], repo, fake_bin,
                            **SLURM_TWO_NODES)
    assert done.returncode == 0, done.stderr
    common = ("--main_process_ip gpu-001 --main_process_port 29500 "
              "scripts/run_sft.py recipes/tiny/sft/config_full.yaml --seed=7 (cwd repo)")
    assert done.stdout.splitlines() == [
        "accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero3.yaml --gradient_accumulation_steps 4 "
        f"--num_machines 2 --num_processes 16 --machine_rank {rank} {common}"
        for rank in (0, 1)
    ]
    srun_line = next(line for line in done.stderr.splitlines() if line.startswith("srun "))
    assert srun_line.startswith("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --kill-on-bad-exit=1 --wait=60 ")
    assert srun_line.endswith("--main_address=gpu-001 --main_port=29500 "
                              f"--repo_root={repo.resolve()} --node_step")


def test_slurm_missing_recipe_is_a_clear_error(repo, fake_bin):
    done = run_launch_slurm(["--dry-run", "tiny", "sft", "qlora", "deepspeed_zero3"], repo, fake_bin,
                            **SLURM_ONE_NODE)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (f"chatalign.launch: error: recipe 'recipes/tiny/sft/config_qlora.yaml' not found under "
                           f"{repo.resolve()}: tiny/sft has: full, lora\n")


def test_slurm_usage_error(repo, fake_bin):
    done = run_launch_slurm(["tiny", "sft"], repo, fake_bin)
    assert done.returncode == 2
    assert done.stderr.startswith("launch.slurm: error: expected MODEL TASK PRECISION ACCELERATOR")
    assert "usage: sbatch --nodes=N recipes/launch.slurm" in done.stderr
