"""Greedy samples from one or more checkpoints, shown side by side (the last step of `make demo`).

    python scripts/sample_checkpoints.py --model_paths models/smollm2-135m-instruct,outputs/smollm2-sft \
        --prompts "What is the capital of France?,Give me three tips for staying healthy."

Each checkpoint is generated from with the chat template saved in it. `--output_file` also writes the samples as JSON.
"""

from __future__ import annotations

import json
import logging
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from chatalign.configs import ChatalignParser

logger = logging.getLogger("sample_checkpoints")

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Give three tips for staying healthy.",
    "Write a haiku about the sea.",
]


@dataclass
class SampleArguments:
    model_paths: list[str] = field(default_factory=list, metadata={"help": "Checkpoints to compare (comma-separated)."})
    prompts: list[str] = field(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        metadata={"help": "User prompts: --prompts 'a' 'b'. One token is split at commas, so write a prompt that "
                          "holds a comma as a YAML list: --prompts '[\"Hi, you\"]'."},
    )
    max_new_tokens: int = 64
    chat_template: str | None = field(default=None, metadata={"help": "Override the checkpoints' own template."})
    column_width: int = 40
    output_file: str | None = None


def side_by_side(prompts: list[str], names: list[str], samples: dict[str, list[str]], width: int) -> str:
    """A plain-text table: one block per prompt, one column per checkpoint."""
    lines = []
    for p, prompt in enumerate(prompts):
        lines.append(f"### {prompt}")
        columns = [textwrap.wrap(samples[name][p] or "(empty)", width) for name in names]
        headers = [textwrap.shorten(name, width) for name in names]
        lines.append(" | ".join(h.ljust(width) for h in headers))
        lines.append("-+-".join("-" * width for _ in names))
        for row in range(max(len(c) for c in columns)):
            lines.append(" | ".join((c[row] if row < len(c) else "").ljust(width) for c in columns))
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict[str, list[str]]:
    (args,) = ChatalignParser([SampleArguments]).parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.model_paths:
        raise SystemExit("give at least one checkpoint with --model_paths")

    from transformers import AutoModelForCausalLM

    from chatalign.data.templates import resolve_chat_template
    from chatalign.data.tokenizers import load_tokenizer
    from chatalign.generation.local import generate_local
    from chatalign.generation.params import SamplingParams

    conversations = [[{"role": "user", "content": p}] for p in args.prompts]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens)
    samples = {}
    for path in args.model_paths:
        tokenizer = load_tokenizer(path, chat_template=args.chat_template, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(path)
        if args.chat_template:
            # A template given here (e.g. an SGLang JSON file) brings its own stop strings.
            params.stop = resolve_chat_template(args.chat_template).stop_strings
        samples[path] = [outs[0] for outs in generate_local(model, tokenizer, conversations, params, progress=False)]
        del model

    print(side_by_side(args.prompts, args.model_paths, samples, args.column_width))
    if args.output_file:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        rows = [{"prompt": p, **{m: samples[m][i] for m in args.model_paths}} for i, p in enumerate(args.prompts)]
        Path(args.output_file).write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    return samples


if __name__ == "__main__":
    main()
