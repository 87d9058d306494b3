"""Running AlpacaEval 2.0: a model's outputs through the generation layer, written as alpaca_eval's
model_outputs.json, annotated against the reference outputs (chatalign.eval.alpaca), one folder per run.

Layout, as alpaca_eval's results/: ``<output_dir>/<model_id>/model_outputs.json`` and
``<output_dir>/<model_id>/<annotator>/annotations.json`` (``run<k>/`` between them with several runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chatalign.eval.alpaca import DEFAULT_ANNOTATOR
from chatalign.generation.generate import generate
from chatalign.generation.params import GenerationArguments, SamplingParams
from chatalign.store import write_text


@dataclass
class AlpacaEvalArguments:
    """Keys of scripts/run_alpaca_eval.py."""

    model_path: str | None = field(default=None, metadata={"help": "The checkpoint to evaluate (folder or hub id)."})
    model_id: str | None = field(default=None, metadata={"help": "Its generator name (default: the folder name)."})
    output_dir: str = field(default="outputs/alpaca_eval", metadata={"help": "Results folder (alpaca_eval's layout)."})
    eval_set_path: str | None = field(
        default=None, metadata={"help": "The eval set as JSON/JSONL (instruction, output, generator, dataset); default: "
                                        "the hub's tatsu-lab/alpaca_eval (CC BY-NC 4.0, not shipped)."})
    reference_outputs: str | None = field(
        default=None, metadata={"help": "The baseline's model_outputs.json (default: the eval set's own outputs, "
                                        "gpt4_1106_preview's in AlpacaEval 2.0)."})
    reference_model_path: str | None = field(
        default=None, metadata={"help": "A checkpoint whose outputs, generated here with the same settings, are the "
                                        "baseline (instead of reference_outputs)."})
    annotators_config: str = field(default=DEFAULT_ANNOTATOR, metadata={"help": "An alpaca_eval annotator config."})
    lc_data_path: str | None = field(default=None, metadata={"help": "alpaca_eval's df_gamed.csv, for the LC win "
                                                                     "rate (else a cached download, else LC missing)."})
    first_n: int | None = field(default=None, metadata={"help": "Only the first n instructions (no LC then)."})
    num_runs: int = field(default=1, metadata={"help": "Generate and annotate this many times (run<k>/ folders)."})
    judge_only: bool = field(default=False, metadata={"help": "Annotate the model_outputs.json already there."})
    gen_temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the model's outputs."})
    gen_max_tokens: int = field(default=2048, metadata={"help": "New tokens per output."})
    seed: int = field(default=42, metadata={"help": "Sampling seed of run 1; run k uses seed + k - 1."})

    def __post_init__(self):
        if not self.model_path and not (self.judge_only and self.model_id):
            raise ValueError("give model_path (or, with judge_only, the model_id whose outputs to annotate)")
        if self.num_runs < 1:
            raise ValueError(f"num_runs must be at least 1, got {self.num_runs}")
        if self.reference_model_path and self.reference_outputs:
            raise ValueError("give reference_outputs or reference_model_path, not both")
        self.model_id = self.model_id or Path(str(self.model_path).rstrip("/")).name


def run_folder(args: AlpacaEvalArguments, run: int) -> Path:
    folder = Path(args.output_dir) / args.model_id
    return folder if args.num_runs == 1 else folder / f"run{run + 1}"


def generate_outputs(args: AlpacaEvalArguments, instructions: list[dict], gen_args: GenerationArguments, run: int,
                     progress: bool = True) -> list[dict]:
    """The model's output to every instruction, resumable; written as alpaca_eval's model_outputs.json."""
    import json

    folder = run_folder(args, run)
    items = [{"id": str(index), "messages": [{"role": "user", "content": row["instruction"]}]}
             for index, row in enumerate(instructions)]
    params = SamplingParams(n=1, temperature=args.gen_temperature, max_tokens=args.gen_max_tokens,
                            seed=args.seed + run)
    rows = generate(args.model_path, items, params, gen_args, folder / ".work" / "outputs.jsonl", progress)
    outputs = [{"instruction": row["instruction"], "output": generated["completions"][0], "generator": args.model_id,
                "dataset": row.get("dataset", "alpaca_eval"), "datasplit": "eval"}
               for row, generated in zip(instructions, rows, strict=True)]
    write_text(folder / "model_outputs.json", json.dumps(outputs, indent=2, ensure_ascii=False) + "\n")
    return outputs
