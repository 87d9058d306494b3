"""PairRM (llm-blender): a DeBERTa-v3 model that reads a prompt and two candidates side by side and says which is better,
computed as its Hugging Face checkpoint ``llm-blender/PairRM-hf`` computes it.

The input is ``<|source|>`` + the prompt (at most 1224 tokens), then ``<|candidate1|>`` + A and ``<|candidate2|>`` + B,
each at most half of what the source leaves of 2048 tokens (the layout of the checkpoint's model card). The head reads
the encodings at the three prefix tokens; the logit is the mean over tasks of head(source, A) - head(source, B), and
P(A is better) = sigmoid(logit).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Model, DebertaV2PreTrainedModel

SOURCE_PREFIX, CANDIDATE1_PREFIX, CANDIDATE2_PREFIX = "<|source|>", "<|candidate1|>", "<|candidate2|>"
SOURCE_MAX_LENGTH, CANDIDATE_MAX_LENGTH = 1224, 412
CONFIG_KEYS = ("n_tasks", "drop_out", "source_prefix_id", "cand1_prefix_id", "cand2_prefix_id")


# llm-blender 0.0.2, its latest release, cannot be imported beside transformers 5 (it imports
# transformers.utils.hub.TRANSFORMERS_CACHE, which 5.0 removed), so its model class is carried here, with the same
# parameter names so that the released checkpoint loads as it is.
class DebertaV2PairRM(DebertaV2PreTrainedModel):
    """llm-blender's PairRM architecture: a DeBERTa-v2 encoder and a two-layer head over (source, candidate)."""

    def __init__(self, config):
        super().__init__(config)
        self.pretrained_model = DebertaV2Model(config)
        hidden = config.hidden_size
        self.head_layer = nn.Sequential(nn.Dropout(config.drop_out), nn.Linear(2 * hidden, hidden), nn.Tanh(),
                                        nn.Dropout(config.drop_out), nn.Linear(hidden, config.n_tasks))
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> SequenceClassifierOutput:
        keep = attention_mask.ne(0).any(dim=0)  # columns that are padding in every row change nothing: dropped
        input_ids, attention_mask = input_ids[:, keep], attention_mask[:, keep]
        hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        def at(token_id: int) -> torch.Tensor:
            rows, columns = torch.where(input_ids == token_id)
            if rows.tolist() != list(range(len(input_ids))):
                raise ValueError(f"PairRM input: every row needs token {token_id} exactly once")
            return hidden[rows, columns]

        source = at(self.config.source_prefix_id)
        left = self.head_layer(torch.cat([source, at(self.config.cand1_prefix_id)], dim=-1))
        right = self.head_layer(torch.cat([source, at(self.config.cand2_prefix_id)], dim=-1))
        return SequenceClassifierOutput(logits=(left - right).mean(dim=-1))


def load_pairrm(path: str, device: str | None = None):
    """(model, tokenizer) of a PairRM checkpoint; an error when it is none (config keys or weights missing)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    missing = [key for key in CONFIG_KEYS if not hasattr(config, key)]
    if missing:
        raise ValueError(f"judge pairrm:{path}: its config.json has no {', '.join(missing)}; a pairrm judge needs "
                         "llm-blender/PairRM-hf or a checkpoint of the same kind")
    model, info = DebertaV2PairRM.from_pretrained(path, output_loading_info=True)
    if info["missing_keys"]:
        raise ValueError(f"judge pairrm:{path}: {len(info['missing_keys'])} weights did not load (e.g. "
                         f"{sorted(info['missing_keys'])[:3]}): the checkpoint is no PairRM model, and its head "
                         "would score at random")
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return model, AutoTokenizer.from_pretrained(path)


def pair_input_ids(tokenizer, source: str, a: str, b: str, source_max_length: int = SOURCE_MAX_LENGTH,
                   candidate_max_length: int = CANDIDATE_MAX_LENGTH) -> list[int]:
    """The ids PairRM reads for one comparison, cut as the model card cuts them."""
    max_length = source_max_length + 2 * candidate_max_length
    source_ids = tokenizer.encode(SOURCE_PREFIX + source, max_length=source_max_length, truncation=True)
    each = (max_length - len(source_ids)) // 2
    a_ids = tokenizer.encode(CANDIDATE1_PREFIX + a, max_length=each, truncation=True)
    b_ids = tokenizer.encode(CANDIDATE2_PREFIX + b, max_length=each, truncation=True)
    return source_ids + a_ids + b_ids


def pairrm_logits(model, tokenizer, sources: list[str], candidates_a: list[str], candidates_b: list[str],
                  batch_size: int = 8, **lengths) -> list[float]:
    """PairRM's logit (> 0: A is better) for every (source, A, B)."""
    out: list[float] = []
    for start in range(0, len(sources), batch_size):
        ids = [pair_input_ids(tokenizer, s, a, b, **lengths) for s, a, b in
               zip(sources[start:start + batch_size], candidates_a[start:start + batch_size],
                   candidates_b[start:start + batch_size], strict=True)]
        batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"].to(model.device),
                           attention_mask=batch["attention_mask"].to(model.device)).logits
        out.extend(logits.float().cpu().tolist())
    return out
