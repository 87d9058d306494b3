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


def test_batched_greedy_generation_equals_one_prompt_at_a_time_and_batches_by_length(tiny_model_dir):
    """What the generation benchmark times: batches of length-sorted prompts give the texts of one-at-a-time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    conversations = [[{"role": "user", "content": "word " * n + f"question {n}?"}] for n in (3, 30, 1, 12, 7, 20)]
    params = SamplingParams(max_tokens=12)
    widths = []
    generate = model.generate

    def recording_generate(input_ids, **kwargs):
        widths.append([int(m.sum()) for m in kwargs["attention_mask"]])
        return generate(input_ids=input_ids, **kwargs)

    model.generate = recording_generate
    batched = generate_local(model, tokenizer, conversations, params, batch_size=3, progress=False)
    one_batch_widths = widths[:]
    widths.clear()
    alone = generate_local(model, tokenizer, conversations, params, batch_size=1, progress=False)
    assert batched == alone and len(batched) == 6 and any(text[0] for text in batched)
    # Longest prompts first, three per batch, each batch's prompts sorted by length.
    flat = [w for batch in one_batch_widths for w in batch]
    assert [len(b) for b in one_batch_widths] == [3, 3] and flat == sorted(flat, reverse=True)
    assert sorted(flat, reverse=True) == sorted((w for (w,) in widths), reverse=True)
