"""Recipe parser: YAML merge order, CLI overrides, unknown keys, wrong types, run_args.yaml."""

import textwrap
from dataclasses import dataclass, field

import pytest
import yaml
from transformers import TrainingArguments

from chatalign.configs import ChatalignParser, ConfigError, read_run_args, write_run_args
from chatalign.data.arguments import DataArguments


@dataclass
class ScriptArgs:
    model_name_or_path: str = "none"
    beta: float = 0.1
    max_length: int | None = None
    use_peft: bool = False
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    preference_config: dict | None = None


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def parser():
    return ChatalignParser([ScriptArgs, DataArguments])


def test_yaml_then_cli_overrides_in_order(tmp_path, parser):
    base = write(tmp_path, "base.yaml", """
        model_name_or_path: base-model
        beta: 0.5
        dataset_mixer: {data/a.json: 0.5}
    """)
    model = write(tmp_path, "model.yaml", """
        model_name_or_path: other-model
        max_length: 512
    """)
    args, data = parser.parse([base, model, "--beta=0.05", "--use_peft", "--max_length", "1024"])
    assert args.model_name_or_path == "other-model"  # later file wins
    assert args.beta == 0.05  # command line wins over every file
    assert args.max_length == 1024
    assert args.use_peft is True  # a bare flag sets a bool
    assert data.dataset_mixer == {"data/a.json": 0.5}
    assert parser.sources["beta"] == "the command line"
    assert parser.sources["model_name_or_path"] == f"'{model}'"


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path, parser):
    # PyYAML reads `1e-5` as a string (YAML 1.1); a float field must still get a float.
    recipe = write(tmp_path, "r.yaml", "beta: 1e-5\n")
    (args, _) = parser.parse([recipe])
    assert args.beta == pytest.approx(1e-5) and isinstance(args.beta, float)


def test_lists_and_dicts_from_the_command_line(parser):
    args, data = parser.parse([
        "--loss_type", "sigmoid", "sft",
        "--dataset_splits=train_sft,test_sft",
        "--dataset_mixer={data/a.json: 1.0, data/b.json: {size: 10}}",
        "--preference_config", "{-100: 1.0, 1.0: 2.0}",
    ])
    assert args.loss_type == ["sigmoid", "sft"]
    assert data.dataset_splits == ["train_sft", "test_sft"]
    assert data.dataset_mixer == {"data/a.json": 1.0, "data/b.json": {"size": 10}}
    assert args.preference_config == {-100: 1.0, 1.0: 2.0}


def test_optional_none_from_cli(parser):
    (args, _) = parser.parse(["--max_length=none"])
    assert args.max_length is None


def test_unknown_key_in_yaml_names_key_file_and_close_matches(tmp_path, parser):
    recipe = write(tmp_path, "bad.yaml", "bta: 0.1\n")
    with pytest.raises(ConfigError) as err:
        parser.parse([recipe])
    assert str(err.value) == f"unknown key 'bta' in '{recipe}'; did you mean beta?"


def test_unknown_key_on_the_command_line(parser):
    with pytest.raises(ConfigError, match=r"unknown key 'dataset_mixr' in the command line; did you mean dataset_mixer"):
        parser.parse(["--dataset_mixr={a: 1}"])


def test_unknown_key_without_close_match_has_no_hint(parser):
    with pytest.raises(ConfigError) as err:
        parser.parse(["--zzzz=1"])
    assert str(err.value) == "unknown key 'zzzz' in the command line"


def test_no_abbreviations(parser):
    # argparse would expand --bet to --beta; a recipe key must be spelled out.
    with pytest.raises(ConfigError, match="unknown key 'bet'"):
        parser.parse(["--bet=0.2"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--beta=abc"], "key 'beta' in the command line: expected float, got 'abc' (str)"),
        (["--max_length=1.5"], "key 'max_length' in the command line: expected int or NoneType, got '1.5' (str)"),
        (["--use_peft=maybe"], "key 'use_peft' in the command line: expected bool, got 'maybe' (str)"),
    ],
)
def test_wrong_type_on_cli_names_key_and_type(parser, argv, message):
    with pytest.raises(ConfigError) as err:
        parser.parse(argv)
    assert str(err.value) == message


def test_wrong_type_in_yaml_names_file(tmp_path, parser):
    recipe = write(tmp_path, "r.yaml", "dataset_mixer: [a, b]\n")
    with pytest.raises(ConfigError) as err:
        parser.parse([recipe])
    assert str(err.value).startswith(f"key 'dataset_mixer' in '{recipe}': expected dict")


def test_missing_and_invalid_files(tmp_path, parser):
    with pytest.raises(ConfigError, match="recipe file '.*nope.yaml' does not exist"):
        parser.parse([str(tmp_path / "nope.yaml")])
    bad = write(tmp_path, "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        parser.parse([bad])
    with pytest.raises(ConfigError, match="unexpected argument 'stray'"):
        parser.parse(["stray"])


def test_named_blocks_compose_like_open_assistant(tmp_path, parser):
    recipe = write(tmp_path, "blocks.yaml", """
        defaults:
          beta: 0.1
          max_length: 256
        galactica-125m:
          model_name_or_path: facebook/galactica-125m
          max_length: 1024
    """)
    args, _ = parser.parse([recipe, "--configs", "defaults", "galactica-125m", "--beta=0.2"])
    assert (args.model_name_or_path, args.max_length, args.beta) == ("facebook/galactica-125m", 1024, 0.2)
    with pytest.raises(ConfigError, match="config block 'galactca' not found .*did you mean galactica-125m"):
        parser.parse([recipe, "--configs", "galactca"])


def test_trl_and_transformers_dataclasses(tmp_path):
    from trl import DPOConfig, ModelConfig

    recipe = write(tmp_path, "dpo.yaml", f"""
        model_name_or_path: some/model
        learning_rate: 5.0e-7
        beta: 0.01
        lr_scheduler_type: cosine
        dataset_mixer: {{data/x.json: 1.0}}
        output_dir: {tmp_path / "out"}
        report_to: none
        bf16: false
    """)
    model_args, data_args, dpo = ChatalignParser([ModelConfig, DataArguments, DPOConfig]).parse(
        [recipe, "--beta=0.05", "--num_train_epochs=2"])
    assert model_args.model_name_or_path == "some/model"
    assert dpo.beta == 0.05 and dpo.learning_rate == 5e-7 and dpo.num_train_epochs == 2
    assert str(dpo.lr_scheduler_type.value) == "cosine"
    assert data_args.dataset_mixer == {"data/x.json": 1.0}
    with pytest.raises(ConfigError, match="unknown key 'learning_rat' .*did you mean learning_rate"):
        ChatalignParser([ModelConfig, DataArguments, DPOConfig]).parse(["--learning_rat=1"])


def test_run_args_roundtrip_without_secrets(tmp_path, parser, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-value")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    training = TrainingArguments(output_dir=str(tmp_path / "run"), hub_token="hf_secret_token_value",
                                 report_to="none")
    args, data = parser.parse(["--model_name_or_path=sk-test-secret-value/model", "--beta=0.3"])
    path = write_run_args(tmp_path / "run", [args, data, training], script="run_dpo.py")
    text = path.read_text()
    assert "secret" not in text and "hub_token" not in text
    doc = read_run_args(tmp_path / "run")
    assert doc["chatalign"]["script"] == "run_dpo.py"
    assert doc["chatalign"]["packages"]["transformers"]
    assert "git_commit" in doc["chatalign"] and doc["chatalign"]["wandb"] is None
    assert doc["args"]["beta"] == 0.3
    assert doc["args"]["model_name_or_path"] == "***/model"
    assert doc["args"]["output_dir"] == str(tmp_path / "run")
    assert yaml.safe_load(text) == doc


def test_run_args_file_is_a_recipe(tmp_path, parser):
    args, data = parser.parse(["--beta=0.3", "--max_length=77"])
    write_run_args(tmp_path, [args, data])
    again, _ = parser.parse([str(tmp_path / "run_args.yaml")])
    assert again == args


def test_read_run_args_missing(tmp_path):
    assert read_run_args(tmp_path) is None


def test_choices_are_enforced():
    from trl import ModelConfig

    with pytest.raises(ConfigError) as err:
        ChatalignParser([ModelConfig]).parse(["--dtype=bf16"])
    assert str(err.value).startswith("key 'dtype' in the command line: 'bf16' is not one of 'auto', ")
    (model_args,) = ChatalignParser([ModelConfig]).parse(["--dtype=bfloat16"])
    assert model_args.dtype == "bfloat16"


def test_run_args_masks_secrets_on_the_command_line_but_keeps_config_keys(tmp_path, monkeypatch):
    @dataclass
    class Args:
        hub_token: str | None = None
        tokenizer_name_or_path: str | None = None
        api_key_env: str = "OPENAI_API_KEY"

    monkeypatch.setattr("sys.argv", ["run_sft.py", "--hub_token=hf_SECRETXYZ", "--hub_token", "hf_OTHER",
                                     "--tokenizer_name_or_path=foo/tok"])
    (args,) = ChatalignParser([Args]).parse(["--hub_token=hf_SECRETXYZ", "--tokenizer_name_or_path=foo/tok"])
    text = write_run_args(tmp_path, [args]).read_text()
    assert "hf_SECRETXYZ" not in text and "hf_OTHER" not in text
    doc = read_run_args(tmp_path)
    assert doc["chatalign"]["command"] == "run_sft.py --hub_token=*** --hub_token *** --tokenizer_name_or_path=foo/tok"
    assert doc["args"] == {"tokenizer_name_or_path": "foo/tok", "api_key_env": "OPENAI_API_KEY"}
