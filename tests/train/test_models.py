"""chatalign.train.models: model loading checks that need no weights, the reference model's own revision, and the
special tokens a composed config's model block gets."""

import types
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, build_tiny_llama, load_script
from helpers.special_tokens import (
    EOS_ID,
    IM_END_ID,
    PAD_ID,
    VOCAB,
    tiny_checkpoint_without_special_tokens,
    write_tiny_blocks,
)

from chatalign.configs import ConfigError
from chatalign.train.models import (
    ModelArguments,
    check_quantization_request,
    load_model,
    load_reference_model,
    load_training_tokenizer,
    reference_revision,
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
@pytest.mark.parametrize("flags, name", [((True, False), "--load_in_4bit"), ((False, True), "--load_in_8bit")])
def test_quantization_on_cpu_is_a_clear_error(flags, name):
    with pytest.raises(ValueError, match=f"^{name} needs a CUDA GPU"):
        check_quantization_request(*flags)
    check_quantization_request(False, False)


def test_the_reference_has_its_own_revision(tmp_path, tiny_model_dir, tiny_tokenizer, monkeypatch):
    args = ModelArguments(model_name_or_path=str(tiny_model_dir), model_revision="policy-rev")
    assert reference_revision(args, None, None) == "policy-rev"  # the policy itself is the reference
    assert reference_revision(args, str(tiny_model_dir), None) == "policy-rev"
    assert reference_revision(args, "org/other-ref", None) == "main"  # not the policy's revision
    assert reference_revision(args, "org/other-ref", "v2") == reference_revision(args, None, "v2") == "v2"

    import transformers

    loaded, real = [], transformers.AutoModelForCausalLM.from_pretrained

    def spy(name, **kwargs):
        loaded.append((str(name), kwargs.get("revision")))
        return real(name)  # local folders: the revision is only recorded

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    other = build_tiny_llama(tmp_path / "ref", tiny_tokenizer, seed=2)
    training_args = types.SimpleNamespace(gradient_checkpointing=False, trust_remote_code=False)
    policy = load_model(args, training_args, tiny_tokenizer)
    load_reference_model(args, training_args, tiny_tokenizer, policy, str(other), reference_revision(args, str(other),
                                                                                                     None))
    assert loaded == [(str(tiny_model_dir), "policy-rev"), (str(other), "main")]


def test_precomputed_reference_dependencies_use_the_reference_revision(tiny_model_dir, tiny_tokenizer, monkeypatch):
    from chatalign.train.dpo import reference
    from chatalign.train.dpo.arguments import DPOScriptArguments

    seen = []
    monkeypatch.setattr(reference, "model_fingerprint", lambda name, revision: seen.append((name, revision)) or {})
    args = ModelArguments(model_name_or_path=str(tiny_model_dir), model_revision="policy-rev")
    training_args = types.SimpleNamespace(bf16=False, fp16=False, max_length=64, truncation_mode="keep_start",
                                          ld_alpha=None)
    for script_args, expected in ((DPOScriptArguments(), (str(tiny_model_dir), "policy-rev")),
                                  (DPOScriptArguments(ref_model_name_or_path="org/ref"), ("org/ref", "main")),
                                  (DPOScriptArguments(ref_model_name_or_path="org/ref", ref_model_revision="v3"),
                                   ("org/ref", "v3"))):
        reference.reference_dependencies(args, training_args, script_args, tiny_tokenizer)
        assert seen[-1] == expected


@pytest.fixture
def tiny_blocks(tmp_path, tiny_tokenizer_dir):
    """The shipped recipes/blocks.yaml (its defaults) plus a file of model blocks for a checkpoint without specials."""
    model_dir = tiny_checkpoint_without_special_tokens(tiny_tokenizer_dir, tmp_path / "tiny-no-specials")
    return [str(REPO / "recipes" / "blocks.yaml"), str(write_tiny_blocks(tmp_path / "tiny_blocks.yaml", model_dir))]


def _load_block(files, block):
    parser = load_script("run_sft").make_parser()
    model_args, data_args, training_args, _ = parser.parse([*files, "--configs", "defaults", block])
    tokenizer = load_training_tokenizer(model_args, data_args.chat_template, sources=parser.sources)
    tokens = (tokenizer.eos_token, tokenizer.pad_token, tokenizer.sep_token)
    ids = (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id, len(tokenizer))
    model = load_model(model_args, training_args, tokenizer)
    configured = (model.config.eos_token_id, model.config.pad_token_id, model.generation_config.pad_token_id)
    return tokens, ids, model.get_input_embeddings().weight.shape[0], configured


def test_a_model_block_without_special_tokens_gets_them_by_the_rules(tiny_blocks):
    # eos: </s> (a special token of the vocabulary), pad: <pad>, sep: eos; nothing added, so nothing resized.
    assert _load_block(tiny_blocks, "tiny-no-specials") == (
        ("</s>", "<pad>", "</s>"), (EOS_ID, PAD_ID, EOS_ID, VOCAB), VOCAB, (EOS_ID, PAD_ID, PAD_ID))


def test_the_tokens_a_model_block_names_win_and_grow_the_embeddings(tiny_blocks):
    # <|im_end|> is in the vocabulary; <|pad|> and <|sep|> are not: two tokens added, rows 1024 -> 1088 (x64).
    assert _load_block(tiny_blocks, "tiny-explicit") == (
        ("<|im_end|>", "<|pad|>", "<|sep|>"), (IM_END_ID, VOCAB, VOCAB + 1, VOCAB + 2), 1088,
        (IM_END_ID, VOCAB, VOCAB))


def test_a_block_whose_pad_is_the_eos_is_an_error_naming_it(tiny_blocks):
    with pytest.raises(ConfigError, match=r"^special_tokens\.pad_token '</s>' in block 'tiny-pad-is-eos' of "
                                          r"'.*tiny_blocks\.yaml' is also the tokenizer's eos token"):
        _load_block(tiny_blocks, "tiny-pad-is-eos")
    # Both named at once: refused while parsing, before anything loads, naming where they were set.
    with pytest.raises(ConfigError, match=r"special_tokens\.pad_token '</s>' is also special_tokens\.eos_token.*"
                                          r"\(from the command line\)$"):
        load_script("run_sft").make_parser().parse(
            [*tiny_blocks, "--configs", "defaults", "tiny-no-specials",
             "--special_tokens", "{pad_token: </s>, eos_token: </s>}"])


def test_the_training_scripts_name_the_block_of_a_conflicting_pad(tiny_blocks, tmp_path, monkeypatch):
    # The same load-time check, reached through each script: the error names the block, before any model loads.
    monkeypatch.chdir(REPO)  # the defaults' dataset paths are relative to the repository
    demo = "data/llama_factory_demo"
    defaults = {"run_dpo": {"dataset_mixer": {f"{demo}/dpo_en_demo.json": 0.1}, "use_cpu": True},
                "run_kto": {"dataset_mixer": {f"{demo}/kto_en_demo.json": 0.1}, "use_cpu": True}}
    for script in ("run_sft", "run_dpo", "run_kto"):
        files = tiny_blocks
        if script in defaults:  # blocks.yaml's defaults are SFT's keys
            files = [str(tmp_path / f"{script}_defaults.yaml"), tiny_blocks[1]]
            Path(files[0]).write_text(yaml.safe_dump({"defaults": defaults[script]}))
        with pytest.raises(ConfigError, match=r"^special_tokens\.pad_token '</s>' in block 'tiny-pad-is-eos' of "):
            load_script(script).main([*files, "--configs", "defaults", "tiny-pad-is-eos",
                                      f"--output_dir={tmp_path / script}"])
