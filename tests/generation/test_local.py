"""chatalign.generation.local and .params: in-process generation, per-item seeds, stop strings."""

from __future__ import annotations

from helpers.chat_stub import make_items, read_jsonl

from chatalign.generation.generate import generate
from chatalign.generation.local import generate_local
from chatalign.generation.params import GenerationArguments, SamplingParams, item_seed
from chatalign.store import ResumableJsonl


def test_in_process_sampling_is_reproducible_per_item_whatever_is_done(tmp_path, tiny_model_dir):
    items = make_items(5)
    params = SamplingParams(n=2, temperature=1.0, top_p=0.9, max_tokens=8, seed=21)
    clean = generate(str(tiny_model_dir), items, params, GenerationArguments(backend="transformers",
                                                                             gen_batch_size=5),
                     tmp_path / "clean.jsonl", progress=False)
    assert any(len(set(row["completions"])) == 2 for row in clean)  # two different samples per item

    # Items q1 and q3 first (other batches, other batch sizes), then the rest as a resumed run.
    out = tmp_path / "resumed.jsonl"
    args = GenerationArguments(backend="transformers", gen_batch_size=2)
    generate(str(tiny_model_dir), [items[1], items[3]], params, args, out, progress=False)
    resumed = generate(str(tiny_model_dir), items, params, args, out, progress=False)
    assert resumed == clean
    assert len(ResumableJsonl(out)) == 5 and len(read_jsonl(out)) == 5

    greedy = generate(str(tiny_model_dir), items[:2], SamplingParams(n=2, max_tokens=8), args, tmp_path / "g.jsonl",
                      progress=False)
    assert all(len(row["completions"]) == 2 and row["completions"][0] == row["completions"][1] for row in greedy)


def test_item_seeds_are_stable_and_distinct():
    assert item_seed(0, "q1") == item_seed(0, "q1") == item_seed(0, "q1")
    assert len({item_seed(0, f"q{i}") for i in range(1000)}) == 1000
    assert item_seed(0, "q1") != item_seed(1, "q1")
    assert item_seed(0, 7) == item_seed(0, "7")  # ids are compared as text, like ResumableJsonl keys
    assert all(0 <= item_seed(s, "x") < 2**31 for s in range(50))


def test_local_generation_cuts_at_special_token_stops(tiny_tokenizer):
    """Stop strings such as <|im_end|> are special tokens: the text is cut at them before specials are stripped."""
    import torch

    from chatalign.generation.params import SamplingParams

    continuation = tiny_tokenizer.encode("Paris.<|im_end|>\n<|im_start|>user\nmore", add_special_tokens=False)

    class ScriptedModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, **kwargs):
            tail = torch.tensor([continuation] * input_ids.shape[0])
            return torch.cat([input_ids, tail], dim=1)

    tok = tiny_tokenizer
    tok.padding_side = "left"
    out = generate_local(ScriptedModel(), tok, [[{"role": "user", "content": "Capital of France?"}]],
                         SamplingParams(max_tokens=16, stop=["<|im_end|>"]), progress=False)
    assert out == [["Paris."]]
    unstopped = generate_local(ScriptedModel(), tok, [[{"role": "user", "content": "Capital of France?"}]],
                               SamplingParams(max_tokens=16), progress=False)
    assert unstopped == [["Paris.\nuser\nmore"]]
