"""chatalign.train.models: model loading checks that need no weights, and the reference model's own revision."""

import types

import pytest
import torch
from conftest import build_tiny_llama

from chatalign.train.models import (
    ModelArguments,
    check_quantization_request,
    load_model,
    load_reference_model,
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
