"""TRL's fused LM head with the tiles chatalign fits for devices without Triton: every output and gradient equals the
full-logits path; Triton devices keep TRL's sizes; loading a model for training fits them."""

import pytest
import torch
import trl.kernels.chunked_logprob as kernel
import trl.trainer.utils as trl_utils
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from chatalign.train.chunked_logps import TORCH_OPS_TILES, fit_fused_head_tiles, fused_head_tiles

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


TRL_TILES = (4096, 32768)  # TRL 1.16's own sizes, before any chatalign load fitted them


@pytest.fixture
def trl_tiles(monkeypatch):
    """TRL's own tile sizes and position scoring for the test; whatever was set before is put back after it."""
    monkeypatch.setattr(kernel, "TOKEN_CHUNK_SIZE", TRL_TILES[0])
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", TRL_TILES[1])
    monkeypatch.setattr(trl_utils, "_use_triton", kernel._use_triton)
    return fused_head_tiles()


def positions_scored(monkeypatch) -> list[int]:
    """The number of positions each call of TRL's fused head passes to its kernel."""
    scored = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def counting_apply(hidden, *args):
        scored.append(hidden.shape[0])
        return apply(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting_apply)
    return scored


def full_logits_outputs(model, ids, labels):
    logits = model(input_ids=ids).logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != -100
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)
    probs = logp.exp()
    fields = {
        "log_probs": picked,
        "entropy": -(probs * logp).sum(-1),
        "log_sum_sq_probs": torch.log((probs * probs).sum(-1)),
        "mean_logits": logits.mean(-1),
        "is_top1": logits.argmax(-1) == target,
    }
    return {name: value.masked_fill(~mask, 0) for name, value in fields.items()}


@pytest.mark.parametrize("tiles", [(3, 7), (5, 1000), TORCH_OPS_TILES])
def test_fitted_tiles_give_the_full_logits_outputs_and_gradients(tiny_model_dir, trl_tiles, tiles, monkeypatch):
    assert fit_fused_head_tiles("cpu", tiles) == tiles == fused_head_tiles()
    scored = positions_scored(monkeypatch)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.randint(5, model.config.vocab_size, (2, 13))  # 24 scored positions: not a multiple of 5 or 7
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt: not scored
    upstream = torch.randn(2, 12)

    expected = full_logits_outputs(model, ids, labels)
    ((expected["log_probs"] * upstream).sum() + expected["entropy"].sum()).backward()
    reference_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    add_fused_lm_head(model, outputs=OUTPUTS)
    got = model(input_ids=ids, labels=labels, fused_lm_head=True)
    ((got.log_probs * upstream).sum() + got.entropy.sum()).backward()
    for name in OUTPUTS:
        value = getattr(got, name)
        if name == "is_top1":
            assert torch.equal(value, expected[name]), name
        else:
            assert torch.allclose(value.float(), expected[name], atol=1e-5), name
    assert (got.log_probs[:, :3] == 0).all()
    assert scored == [2 * 9]  # only the labelled positions reach the kernel, not the prompt's 2 x 3
    for p, g in zip(model.parameters(), reference_grads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-5)


def test_trl_scores_every_position_on_cpu_until_fitted(tiny_model_dir, trl_tiles, monkeypatch):
    """What the fit changes: TRL alone passes the prompt's positions to the kernel too; the kernel's own choice of
    fold (Triton or torch ops) is not touched."""
    scored = positions_scored(monkeypatch)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    add_fused_lm_head(model, outputs=("log_probs",))
    ids = torch.randint(5, model.config.vocab_size, (2, 13))
    labels = ids.clone()
    labels[:, :4] = -100
    before = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
    fit_fused_head_tiles("cpu")
    fit_fused_head_tiles("cpu")  # idempotent: one wrapper
    after = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
    assert scored == [2 * 12, 2 * 9]
    assert torch.allclose(before, after, atol=1e-6)
    assert trl_utils._use_triton(torch.device("cpu")) and not kernel._use_triton(torch.device("cpu"))


def test_a_triton_device_keeps_trls_tiles(trl_tiles, monkeypatch):
    monkeypatch.setattr(kernel, "_use_triton", lambda device: device.type == "cuda")
    assert fit_fused_head_tiles("cuda") == trl_tiles
    assert fused_head_tiles() == trl_tiles
    assert fit_fused_head_tiles("cpu") == TORCH_OPS_TILES == fused_head_tiles()
    assert TORCH_OPS_TILES != trl_tiles  # the fit changes something on CPUs


def test_loading_a_model_for_training_fits_the_tiles(tiny_model_dir, tmp_path, trl_tiles, monkeypatch):
    from transformers import AutoTokenizer, TrainingArguments

    from chatalign.train.models import ModelArguments, load_model

    training_args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    load_model(ModelArguments(model_name_or_path=str(tiny_model_dir)), training_args, tokenizer)
    assert fused_head_tiles() == TORCH_OPS_TILES


def test_a_dpo_or_kto_trainer_given_any_model_fits_the_tiles(tiny_model_dir, tmp_path, trl_tiles, monkeypatch):
    """The benchmarks (and users) build trainers from a model they loaded themselves, not through load_model; TRL's
    precompute_ref_log_probs pass, which runs inside the trainer's construction, already gets the fitted tiles."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, KTOConfig

    from chatalign.train.dpo.trainer import ChatalignDPOTrainer
    from chatalign.train.kto import ChatalignKTOTrainer
    from tests.helpers.preference import preference_rows, unpaired_rows

    tiles_seen = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def recording_apply(*args):
        tiles_seen.append(fused_head_tiles())
        return apply(*args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", recording_apply)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for trainer_class, config_class, rows in ((ChatalignDPOTrainer, DPOConfig, preference_rows),
                                              (ChatalignKTOTrainer, KTOConfig, unpaired_rows)):
        kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = TRL_TILES
        tiles_seen.clear()
        config = config_class(output_dir=str(tmp_path / config_class.__name__), use_cpu=True, report_to="none",
                              max_length=64, precompute_ref_log_probs=True, per_device_train_batch_size=2)
        trainer_class(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=config,
                      processing_class=tokenizer, train_dataset=Dataset.from_list(rows(4)))
        assert tiles_seen and set(tiles_seen) == {TORCH_OPS_TILES}, trainer_class.__name__  # the precompute pass
        assert fused_head_tiles() == TORCH_OPS_TILES, trainer_class.__name__


def test_the_reference_pass_of_precompute_fits_the_tiles(tiny_model_dir, tmp_path, trl_tiles, monkeypatch):
    """chatalign.train.dpo.reference.compute_ref_logps (precompute_ref_logprobs.py, the run_dpo cache) runs TRL's
    stock DPOTrainer on the reference: it fits the tiles itself."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig

    from chatalign.train.dpo.reference import RefLogps, compute_ref_logps
    from tests.helpers.preference import preference_rows

    tiles_seen = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda *args: tiles_seen.append(fused_head_tiles()) or apply(*args))
    args = DPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", max_length=64)
    data = compute_ref_logps(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                             AutoTokenizer.from_pretrained(tiny_model_dir), args,
                             [Dataset.from_list(preference_rows(4))], tmp_path / "ref.parquet", RefLogps({}, set(), {}),
                             {"x": 1})
    assert len(data.logps) == 4 and tiles_seen and set(tiles_seen) == {TORCH_OPS_TILES}
