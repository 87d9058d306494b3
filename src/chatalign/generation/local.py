"""Generation in process with transformers: batched by prompt length, sampled per item with its own seed."""

from __future__ import annotations

from chatalign.generation.params import SamplingParams, item_seed, sample_seed, truncate_at_stop


def encode_prompts(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    # The chat template already writes any bos token; don't let the tokenizer add a second one.
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def _seeded_sampler(row_seeds: list[int], temperature: float, top_p: float, device):
    """A logits processor that samples every row with its own torch.Generator and leaves only that token.

    `generate` then runs in greedy mode and picks the sampled token. Each row's draws depend only on its seed and its
    own logits, not on which other prompts share the batch, which the global RNG of `do_sample=True` cannot give.
    """
    import torch
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        def __init__(self):
            self.generators = [torch.Generator(device=device).manual_seed(s) for s in row_seeds]

        def __call__(self, input_ids, scores):
            logits = scores.float() / temperature
            if top_p < 1.0:
                ordered, order = torch.sort(logits, descending=True, dim=-1)
                probs = ordered.softmax(dim=-1)
                # Drop a token once the tokens before it already cover top_p (the most likely one always stays).
                ordered = ordered.masked_fill(probs.cumsum(dim=-1) - probs > top_p, float("-inf"))
                logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
            probs = logits.softmax(dim=-1)
            picks = torch.stack([torch.multinomial(probs[row], 1, generator=gen)
                                 for row, gen in enumerate(self.generators)])
            return torch.full_like(scores, float("-inf")).scatter(1, picks, 0.0)

    return SeededSampler()


def _strip_specials(text: str, specials: list[str]) -> str:
    for token in specials:
        text = text.replace(token, "")
    return text


def generate_local(model, tokenizer, conversations: list[list[dict]], params: SamplingParams,
                   batch_size: int = 8, progress: bool = True, seeds: list[int] | None = None) -> list[list[str]]:
    """`params.n` completions for each conversation (a list of messages ending with a user turn), in input order.

    Batches are formed from prompts sorted by length, so little compute goes to padding; left padding keeps every
    prompt's last token next to its first generated token.

    Sampling (temperature > 0) is reproducible per conversation: sample j of conversation i is drawn from its own
    generator seeded with ``sample_seed(seeds[i], j)`` (seeds default to ``item_seed(params.seed, i)``), so the same
    conversation gets the same samples whatever else is in its batch, e.g. when a resumed run generates only the
    missing items. (Padding can still move logits by float rounding, which very rarely changes a draw.)
    """
    import torch
    from tqdm.auto import tqdm

    if seeds is None:
        seeds = [item_seed(params.seed, i) for i in range(len(conversations))]
    if len(seeds) != len(conversations):
        raise ValueError(f"generate_local: {len(seeds)} seeds for {len(conversations)} conversations")
    encoded = encode_prompts(tokenizer, conversations)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    results: list[list[str]] = [[] for _ in conversations]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    do_sample = params.temperature > 0
    model.eval()
    bar = tqdm(total=len(order), desc="generate", disable=not progress)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        # Greedy decoding gives the same text n times: decode once per prompt. Sampling decodes each prompt n times,
        # row r*copies + j being sample j of prompt r.
        copies = params.n if do_sample else 1
        input_ids = torch.full((len(batch) * copies, width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch) * copies, width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = encoded[i]
            rows = slice(row * copies, (row + 1) * copies)
            input_ids[rows, width - len(ids):] = torch.tensor(ids)
            attention[rows, width - len(ids):] = 1
        processors = []
        if do_sample:
            row_seeds = [sample_seed(seeds[i], j) for i in batch for j in range(copies)]
            processors.append(_seeded_sampler(row_seeds, params.temperature, params.top_p, device))
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=params.max_tokens,
                do_sample=False,  # sampling, when asked for, is done by the seeded processor
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=processors or None,
                pad_token_id=pad_id,
            )
        new_tokens = out[:, width:]
        # Keep special tokens until the stop strings have cut the text: most stops (<|im_end|>, </s>) are special
        # tokens, and skipping them first would leave nothing to cut at.
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=False)
        # what skip_special_tokens would drop: the special map plus every added token flagged special
        specials = sorted({t for t in tokenizer.all_special_tokens if t} | {
            t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}, key=len,
            reverse=True)
        for row, i in enumerate(batch):
            samples = [_strip_specials(truncate_at_stop(t, params.stop), specials).strip()
                       for t in texts[row * copies:(row + 1) * copies]]
            results[i] = samples if do_sample else samples * params.n
        bar.update(len(batch))
    bar.close()
    return results
