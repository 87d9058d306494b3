"""Self-play step 2: the model's own answers to the reformatted prompts, one fraction of them per run.

    python scripts/generate.py --model outputs/smollm2-135m-selfplay-iter0 --input_dir generated/synthetic \
        --output_dir generated/iter1 --split train --frac_len 0
    # the same on 8 machines, one fraction each (K = 0..7), then merged by scripts/convert_data.py:
    python scripts/generate.py --model data/mistral-7b-sft-full --input_dir generated/synthetic \
        --output_dir generated/iter0 --split train --data_frac K --frac_len 25000 --backend vllm --world_size 1

The prompts of `split` are shuffled with `shuffle_seed`; fraction K is rows [frac_len*K, frac_len*(K+1)) of that
order (frac_len 0: all rows, K must be 0) and is written to <output_dir>/<split>_frac<K>.jsonl, one row per prompt
({id: prompt_id, messages, real, shuffle, completions, generator}). Prompts are rendered with the model's chat
template (or gen_chat_template) by chatalign.generation.generate, through any of its backends (world_size: vLLM tensor
parallel). Rows are written as they finish and a rerun generates only the prompts not yet in the file, so an
interrupted run is resumed by running it again and a finished one adds nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chatalign.configs import ChatalignParser
from chatalign.generation.params import GenerationArguments

logger = logging.getLogger("generate")


@dataclass
class SelfPlayGenerateArguments:
    model: str | None = field(default=None, metadata={"help": "Checkpoint (path or hub id) that answers the prompts."})
    input_dir: str = field(default="generated/synthetic", metadata={"help": "scripts/reformat.py's output."})
    output_dir: str | None = field(default=None, metadata={"help": "Where <split>_frac<K>.jsonl goes, e.g. "
                                                                   "generated/iter0."})
    split: Literal["train", "test"] = "train"
    data_frac: int = field(default=0, metadata={"help": "Which fraction K of the shuffled prompts to generate."})
    frac_len: int = field(default=0, metadata={"help": "Prompts per fraction; 0: all prompts (data_frac 0)."})
    shuffle_seed: int = field(default=42, metadata={"help": "Seed of the prompt order the fractions cut up; every "
                                                           "fraction of one run must use the same."})
    n: int = field(default=1, metadata={"help": "Completions per prompt."})
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    stop: list[str] = field(default_factory=list, metadata={"help": "Extra stop strings."})

    def __post_init__(self):
        if not self.model:
            raise ValueError("give the model that generates with --model")
        if not self.output_dir:
            raise ValueError("give --output_dir (e.g. generated/iter0)")
        if self.frac_len < 0 or self.data_frac < 0:
            raise ValueError(f"frac_len and data_frac must be >= 0, got {self.frac_len} and {self.data_frac}")
        if self.frac_len == 0 and self.data_frac != 0:
            raise ValueError(f"frac_len 0 generates all prompts as fraction 0; data_frac must be 0, got "
                             f"{self.data_frac}")


def make_parser() -> ChatalignParser:
    return ChatalignParser([SelfPlayGenerateArguments, GenerationArguments])


def main(argv=None) -> list[dict]:
    args, gen_args = make_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from chatalign.generation.generate import generate
    from chatalign.generation.params import SamplingParams
    from chatalign.synth.selfplay import fraction_file, fraction_items, load_prompts

    prompts = load_prompts(args.input_dir, args.split)
    items = fraction_items(prompts, args.data_frac, args.frac_len, args.shuffle_seed)
    output_file = fraction_file(args.output_dir, args.split, args.data_frac)
    logger.info("%s fraction %d: %d of %d prompts (shuffle seed %d) -> %s", args.split, args.data_frac, len(items),
                len(prompts), args.shuffle_seed, output_file)
    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                            stop=list(args.stop), seed=args.seed)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    return generate(args.model, items, params, gen_args, output_file)


if __name__ == "__main__":
    main()
