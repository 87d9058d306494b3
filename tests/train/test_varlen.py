"""chatalign.train.varlen: per-sequence attention for flattened batches equals each sequence alone and transformers'
dense packed mask (logits and gradients), is sdpa itself for every other batch, and load_model picks it for
padding-free training."""

import json
import types

import pytest
import torch
import yaml
from conftest import REPO, load_script
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from chatalign.train import varlen
from chatalign.train.models import ModelArguments, load_model, select_attn_implementation
from chatalign.train.varlen import VARLEN_ATTENTION, batch_boundaries, sequence_boundaries

LENGTHS = [7, 1, 12, 5]  # a one-token sequence included
SFT_DATA = {str(REPO / "data/llama_factory_demo/alpaca_en_demo.json"): 0.04,
            str(REPO / "data/tora_math_code/examples.jsonl"): 0.5}


def tiny_llama(kv_heads: int, vocab: int = 120, seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


def flattened(lengths, vocab=120, seed=1):
    generator = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, vocab, (n,), generator=generator) for n in lengths]
    return seqs, torch.cat(seqs)[None], torch.cat([torch.arange(n) for n in lengths])[None]


def no_dense_mask(monkeypatch):
    monkeypatch.setattr(varlen, "sdpa_mask", lambda *a, **k: pytest.fail("a dense mask was built"))


@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # MHA, GQA, MQA
def test_flattened_logits_equal_each_sequence_alone_and_the_dense_mask(kv_heads, monkeypatch):
    model = tiny_llama(kv_heads)
    seqs, ids, positions = flattened(LENGTHS)
    with torch.no_grad():
        alone = torch.cat([model(input_ids=s[None], use_cache=False).logits[0] for s in seqs])
        dense = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]  # sdpa's T x T block mask
        model.set_attn_implementation(VARLEN_ATTENTION)
        no_dense_mask(monkeypatch)
        flat = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
    assert model.config._attn_implementation == VARLEN_ATTENTION
    assert flat.shape == (sum(LENGTHS), 120)
    assert (flat - alone).abs().max() < 1e-5
    assert (flat - dense).abs().max() < 1e-5
    # the sequences really are isolated: without restarting positions the later ones differ
    with torch.no_grad():
        leaked = model(input_ids=ids, use_cache=False).logits[0]
    assert (leaked[LENGTHS[0]:] - alone[LENGTHS[0]:]).abs().max() > 1e-3


def test_several_flattened_rows_each_split_on_their_own(monkeypatch):
    model = tiny_llama(2)
    _, first, first_positions = flattened([4, 9, 3])
    _, second, second_positions = flattened([10, 6], seed=3)
    ids, positions = torch.cat([first, second]), torch.cat([first_positions, second_positions])
    with torch.no_grad():
        dense = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        rows = [model(input_ids=ids[i:i + 1], position_ids=positions[i:i + 1], use_cache=False).logits
                for i in range(2)]
        model.set_attn_implementation(VARLEN_ATTENTION)
        no_dense_mask(monkeypatch)
        flat = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    assert (flat - dense).abs().max() < 1e-5 and (flat - torch.cat(rows)).abs().max() < 1e-5


def summed_loss(logits, targets):
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


def grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_parameter_gradients_equal_one_at_a_time_and_the_dense_mask(kv_heads):
    model = tiny_llama(kv_heads).train()  # attention_dropout is 0: training mode is deterministic
    seqs, ids, positions = flattened(LENGTHS)
    targets = torch.randint(0, 120, (sum(LENGTHS),), generator=torch.Generator().manual_seed(5))

    model.zero_grad()
    start = 0
    for s in seqs:
        summed_loss(model(input_ids=s[None], use_cache=False).logits[0], targets[start:start + len(s)]).backward()
        start += len(s)
    alone = grads(model)
    model.zero_grad()
    summed_loss(model(input_ids=ids, position_ids=positions, use_cache=False).logits[0], targets).backward()
    dense = grads(model)
    model.set_attn_implementation(VARLEN_ATTENTION)
    model.zero_grad()
    summed_loss(model(input_ids=ids, position_ids=positions, use_cache=False).logits[0], targets).backward()
    flat = grads(model)
    assert set(flat) == set(alone) and len(flat) == 2 * 9 + 3
    for name in flat:
        assert (flat[name] - alone[name]).abs().max() < 1e-5, name
        assert (flat[name] - dense[name]).abs().max() < 1e-5, name
    assert any(flat[name].abs().max() > 1e-3 for name in flat if "k_proj" in name)  # attention did get gradients


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_every_other_batch_is_exactly_sdpa(kv_heads):
    model = tiny_llama(kv_heads)
    ids = torch.randint(3, 120, (3, 9), generator=torch.Generator().manual_seed(2))
    right = torch.ones_like(ids)
    right[0, 6:], right[2, 4:] = 0, 0
    left = torch.ones_like(ids)
    left[1, :3] = 0
    left_positions = (left.cumsum(-1) - 1).clamp(min=0)  # restarts inside the pad: the mask must still decide
    cases = [dict(attention_mask=right), dict(attention_mask=left, position_ids=left_positions), dict(),
             dict(position_ids=torch.arange(9)[None])]
    with torch.no_grad():
        expected = [model(input_ids=ids, use_cache=False, **kw).logits for kw in cases]
        generated = model.generate(ids[:1], max_new_tokens=4, do_sample=False, pad_token_id=0)
        model.set_attn_implementation(VARLEN_ATTENTION)
        got = [model(input_ids=ids, use_cache=False, **kw).logits for kw in cases]
        assert torch.equal(model.generate(ids[:1], max_new_tokens=4, do_sample=False, pad_token_id=0), generated)
    for case, a, b in zip(cases, expected, got, strict=True):
        assert torch.equal(a, b), sorted(case)


def test_trl_padding_free_batches_with_cu_seq_lens():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = tiny_llama(2)
    seqs, _, _ = flattened(LENGTHS)
    rows = [{"input_ids": s.tolist()} for s in seqs]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, pad_to_multiple_of=8)(rows)
    assert batch["cu_seq_lens_q"].tolist() == [0, 7, 8, 20, 25, 26, 27, 28, 29, 30, 31, 32]  # pads: own sequences
    with torch.no_grad():
        dense = model(**batch, use_cache=False).loss
        model.set_attn_implementation(VARLEN_ATTENTION)
        flat = model(**batch, use_cache=False).loss
        batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = torch.tensor([0, 7, 40], dtype=torch.int32)
        with pytest.raises(ValueError, match=r"cu_seq_lens \[0, 7, 40\] do not split a row of 32 tokens"):
            model(**batch, use_cache=False)
    assert flat.item() == pytest.approx(dense.item(), abs=1e-6)


def test_sequence_boundaries():
    assert sequence_boundaries(torch.tensor([[0, 1, 2, 0, 1, 0]])) == [[0, 3, 5, 6]]
    assert sequence_boundaries(torch.tensor([0, 1, 2, 3])) is None  # one sequence
    assert sequence_boundaries(torch.tensor([[0, 1, 0, 1], [0, 1, 2, 3]])) == [[0, 2, 4], [0, 4]]
    assert sequence_boundaries(torch.tensor([[3, 4, 9, 10]])) == [[0, 2, 4]]  # a jump starts a sequence too
    # position_ids [1, T] shared by a batch; queries and keys split differently: position_ids decide
    assert batch_boundaries(2, 4, torch.tensor([[0, 1, 0, 1]])) == [[0, 2, 4], [0, 2, 4]]
    assert batch_boundaries(1, 4, torch.tensor([[0, 1, 0, 1]]), torch.tensor([0, 4]),
                            torch.tensor([0, 1, 4])) == [[0, 2, 4]]


def test_boundaries_are_read_once_per_forward(monkeypatch):
    model = tiny_llama(2)
    model.set_attn_implementation(VARLEN_ATTENTION)
    calls = []
    real = varlen.sequence_boundaries
    monkeypatch.setattr(varlen, "sequence_boundaries", lambda p: calls.append(1) or real(p))
    _, ids, positions = flattened(LENGTHS)
    with torch.no_grad():
        first = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        assert len(calls) == 1  # 2 layers, one device-to-host read
        positions[0, 3:] = torch.arange(sum(LENGTHS) - 3)  # edited in place: read again
        second = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    assert len(calls) == 2 and not torch.allclose(first, second)


@pytest.mark.parametrize("requested, padding_free, flash, expected", [
    (None, True, False, VARLEN_ATTENTION),
    ("sdpa", True, False, VARLEN_ATTENTION),
    ("eager", True, False, "eager"),  # an explicit choice other than sdpa is kept
    ("flex_attention", True, True, "flex_attention"),
    (None, True, True, "flash_attention_2"),  # flash-attn is varlen itself
    ("sdpa", True, True, "flash_attention_2"),
    (None, False, False, None),  # padded training: untouched
    ("sdpa", False, True, "sdpa"),
])
def test_attention_selection_rule(requested, padding_free, flash, expected, monkeypatch):
    monkeypatch.setattr("chatalign.train.models.flash_attention_2_available", lambda: flash)
    assert select_attn_implementation(requested, padding_free)[0] == expected


def test_load_model_picks_varlen_for_padding_free_training(tiny_model_dir, tok, monkeypatch, caplog):
    caplog.set_level("INFO", logger="chatalign.train.models")
    monkeypatch.setattr("chatalign.train.models.flash_attention_2_available", lambda: False)
    args = ModelArguments(model_name_or_path=str(tiny_model_dir))
    sft_padding_free = types.SimpleNamespace(padding_free=True, gradient_checkpointing=False)
    model = load_model(args, sft_padding_free, tok)
    assert model.config._attn_implementation == VARLEN_ATTENTION
    assert f"attention: {VARLEN_ATTENTION} (padding-free training without flash-attn" in caplog.text
    packed = types.SimpleNamespace(padding_free=False, packing=True, packing_strategy="bfd")
    assert load_model(args, packed, tok).config._attn_implementation == VARLEN_ATTENTION
    assert load_model(args, types.SimpleNamespace(), tok).config._attn_implementation == "sdpa"
    # a preference trainer's own flag wins over training_args
    assert load_model(args, types.SimpleNamespace(), tok, padding_free=True).config._attn_implementation == (
        VARLEN_ATTENTION)
    eager = ModelArguments(model_name_or_path=str(tiny_model_dir), attn_implementation="eager")
    assert load_model(eager, sft_padding_free, tok).config._attn_implementation == "eager"

    import transformers

    class Loaded(Exception):
        pass

    def spy(name, **kwargs):
        seen.append(kwargs["attn_implementation"])
        raise Loaded  # before any flash-attn kernel would be needed

    seen = []
    monkeypatch.setattr("chatalign.train.models.flash_attention_2_available", lambda: True)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    with pytest.raises(Loaded):
        load_model(args, sft_padding_free, tok)
    assert seen == ["flash_attention_2"]


def first_step_loss(tmp_path, model_dir, **keys):
    recipe = {"model_name_or_path": str(model_dir), "dataset_mixer": SFT_DATA, "dataset_splits": ["train"],
              "max_length": 512, "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 4,
              "max_steps": 1, "logging_steps": 1, "save_strategy": "no", "bf16": False, "use_cpu": True,
              "report_to": "none", "seed": 7, "dataloader_num_workers": 0, **keys}
    path = tmp_path / "recipe.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(recipe))
    trainer = load_script("run_sft").main([str(path)])
    history = json.loads((tmp_path / "out/trainer_state.json").read_text())["log_history"]
    return trainer, [h["loss"] for h in history if "loss" in h][0]


def test_padding_free_sft_trains_with_varlen_and_the_padded_loss(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr("chatalign.train.models.flash_attention_2_available", lambda: False)
    padded, padded_loss = first_step_loss(tmp_path / "padded", tiny_model_dir, padding_free=False)
    no_dense_mask(monkeypatch)  # the flattened run never builds a T x T mask
    split = []
    monkeypatch.setattr(varlen, "batch_boundaries", lambda *a: split.append(batch_boundaries(*a)) or split[-1])
    flat, flat_loss = first_step_loss(tmp_path / "flat", tiny_model_dir, padding_free=True)
    # 2 layers, each run again in the backward (activation checkpointing): one flattened row of 4 sequences
    assert len(split) == 4 and all(s == split[0] for s in split) and len(split[0]) == 1
    assert len(split[0][0]) == 4 + 1 and len(set(torch.tensor(split[0][0]).diff().tolist())) == 4
    assert padded.model.config._attn_implementation == "sdpa"
    assert flat.model.config._attn_implementation == VARLEN_ATTENTION
    assert flat_loss == pytest.approx(padded_loss, abs=1e-5)
    saved = json.loads((tmp_path / "flat/out/config.json").read_text())
    assert VARLEN_ATTENTION not in json.dumps(saved)  # the checkpoint loads without chatalign
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "flat/out").config._attn_implementation == "sdpa"


@pytest.mark.slow
def test_smollm2_flattened_logits_equal_each_sequence_alone(smollm2_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
    seqs, ids, positions = flattened([40, 3, 77, 19], vocab=model.config.vocab_size)
    with torch.no_grad():
        alone = torch.cat([model(input_ids=s[None], use_cache=False).logits[0] for s in seqs])
        model.set_attn_implementation(VARLEN_ATTENTION)
        no_dense_mask(monkeypatch)
        flat = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
    assert (flat - alone).abs().max() < 1e-4
