"""Self-play step 3: generated fractions -> a training set (parquet) for nnPU-KTO, DPO or SPIN.

    python scripts/convert_data.py --input_dir generated/iter0 --split train --format kto
    # -> generated/iter0/kto/train.parquet; train on it with
    python scripts/run_kto.py recipes/smollm2-135m/kto/config_selfplay.yaml --dataset_mixer="{generated/iter0/kto: 1.0}"

All <split>_frac<K>.jsonl files of input_dir are merged (one row per prompt_id; two files that disagree on a prompt are
an error) and every (real, generated) pair becomes:
  kto:  two unpaired rows {prompt, completion, label, prompt_id}: real with label True (positive), generated with label
        False (unlabelled); run_kto with kto_variant nnpu pairs them per prompt_id.
  dpo:  a preference row {prompt, chosen = real, rejected = generated, prompt_id} (TRL's conversational schema).
  spin: the dpo row plus SPIN's own "real" and "generated" columns (whole conversations), same pairs.
Written to <output_dir, default input_dir/format>/<split>.parquet, a folder the dataset mixer reads by split
(train.parquet -> train, test.parquet -> test). Point dataset_mixer at that folder, not at input_dir, whose JSONL
fraction files are raw generations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chatalign.configs import ChatalignParser

logger = logging.getLogger("convert_data")


@dataclass
class ConvertArguments:
    input_dir: str | None = field(default=None, metadata={"help": "scripts/generate.py's output_dir."})
    split: Literal["train", "test"] = "train"
    format: Literal["kto", "dpo", "spin"] = "kto"
    output_dir: str | None = field(default=None, metadata={"help": "Default: <input_dir>/<format>."})

    def __post_init__(self):
        if not self.input_dir:
            raise ValueError("give the generation folder with --input_dir (e.g. generated/iter0)")


def make_parser() -> ChatalignParser:
    return ChatalignParser([ConvertArguments])


def main(argv=None) -> Path:
    (args,) = make_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from chatalign.synth.selfplay import convert_rows, merge_fractions, summary, write_training_set

    generated = merge_fractions(args.input_dir, args.split)
    rows, counts = convert_rows(generated, args.format)
    if not rows:
        raise ValueError(f"'{args.input_dir}' split '{args.split}': no {args.format} rows ({summary(counts)})")
    output_dir = Path(args.output_dir) if args.output_dir else Path(args.input_dir) / args.format
    path = write_training_set(rows, args.format, output_dir / f"{args.split}.parquet")
    logger.info("%s %s: %d rows from %d prompts -> %s (%s)", args.split, args.format, len(rows), len(generated), path,
                summary(counts))
    return path


if __name__ == "__main__":
    main()
