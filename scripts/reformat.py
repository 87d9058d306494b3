"""Self-play step 1: an SFT source -> single-turn prompts with their ground-truth answers (SPIN's reformat).

    python scripts/reformat.py --data HuggingFaceH4/ultrachat_200k --train_split train_sft --test_split test_sft \
        --output_dir generated/synthetic
    python scripts/reformat.py --data data/llama_factory_demo/alpaca_en_demo.json --output_dir generated/synthetic

Writes <output_dir>/train.parquet and <output_dir>/test.parquet, rows {prompt_id, prompt: [messages], real: str}.
Each conversation gives its first exchange: the messages up to the first user turn are the prompt, the assistant reply
after it is the real answer; later turns are dropped (they answer a first reply the model never wrote). prompt_id is
the source's own (UltraChat) or a sha256 of the prompt; repeated prompts are kept once. A source without a test split
gets `test_size` of its prompts carved off (seeded). The source is read with chatalign.data.sources.load_source (hub
id, file or folder) and any SFT adapter (`format`, detected when not given); ToRA-style math trajectories are read whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chatalign.configs import ChatalignParser

logger = logging.getLogger("reformat")


@dataclass
class ReformatArguments:
    data: str | None = field(default=None, metadata={"help": "SFT source: hub id, local file or folder."})
    output_dir: str = field(default="generated/synthetic", metadata={"help": "Where train/test files are written."})
    train_split: str = field(default="train", metadata={"help": "The source's train split (ultrachat: train_sft)."})
    test_split: str = field(default="test", metadata={"help": "The source's test split (ultrachat: test_sft)."})
    test_size: float = field(
        default=0.1, metadata={"help": "Sources without the test split: carve this fraction (< 1) or count (>= 1) off "
                                       "the train prompts, seeded."})
    seed: int = field(default=42, metadata={"help": "Seed of the carved test split."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep the first n prompts of each split."})
    format: str | None = field(default=None, metadata={"help": "SFT adapter (alpaca, sharegpt, ultrachat, messages, "
                                                                "...); default: detected."})
    skip_invalid: bool = field(default=False, metadata={"help": "Skip malformed rows (counted) instead of stopping."})
    output_format: Literal["parquet", "jsonl"] = "parquet"

    def __post_init__(self):
        if not self.data:
            raise ValueError("give the SFT source with --data (hub id, file or folder)")
        if self.test_size <= 0 or (self.test_size >= 1 and int(self.test_size) != self.test_size):
            raise ValueError(f"test_size must be a fraction in (0, 1) or a whole row count, got {self.test_size}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {self.max_samples}")


def make_parser() -> ChatalignParser:
    return ChatalignParser([ReformatArguments])


def main(argv=None) -> dict[str, Path]:
    (args,) = make_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from chatalign.synth.selfplay import reformat_source, summary, write_rows

    test_size = args.test_size if args.test_size < 1 else int(args.test_size)
    splits, counts = reformat_source(args.data, args.train_split, args.test_split, test_size, args.seed,
                                     args.max_samples, args.format, args.skip_invalid)
    written = {}
    for split, rows in splits.items():
        if not rows:
            raise ValueError(f"dataset '{args.data}': no {split} prompts left ({summary(counts[split])})")
        for stale in Path(args.output_dir).glob(f"{split}.*"):  # the other output_format of an earlier run
            if stale.suffix in (".parquet", ".jsonl") and stale.suffix != f".{args.output_format}":
                logger.info("removing %s (written by an earlier run in the other output_format)", stale)
                stale.unlink()
        written[split] = write_rows(rows, Path(args.output_dir) / f"{split}.{args.output_format}")
        logger.info("%s: %d prompts -> %s (%s)", split, len(rows), written[split], summary(counts[split]))
    return written


if __name__ == "__main__":
    main()
