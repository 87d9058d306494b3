"""On-policy preference pairs: sample n responses per prompt, rank them with a judge, keep best against worst.

    python scripts/gen_preference_pairs.py --model_path outputs/smollm2-dpo \
        --prompt_dataset HuggingFaceH4/ultrafeedback_binarized --prompt_dataset_split train_prefs \
        --n_to_rank 5 --gen_temperature 0.8 --max_samples -1 --judge reward_model:models/my-rm \
        --p_ori_pair 0.15 --p_ori_chosen 0.35 --dset_save_name data/pairs/smollm2-odpo
    accelerate launch --multi_gpu --num_processes 2 scripts/gen_preference_pairs.py recipe.yaml   # a shard each
    (on a machine without GPUs too: `accelerate launch --cpu` starts a single process; --multi_gpu or torchrun
    start one per shard, which then join over gloo)

Judges (`--judge`, see chatalign.judges): reward_model:<path> (a sequence-classification reward model), pairrm:<path>
(llm-blender's PairRM, e.g. a local copy of llm-blender/PairRM-hf, ranked by tournament wins), llm:<local path | url |
model@url | model> (a 1-10 rating per response, "Rating: [[7]]"). Generation goes through chatalign.generation (`--backend`, `--base_url`, ...).

Ranking: chosen = first sample with the highest score, rejected = first with the lowest; prompts whose samples are
all identical, with fewer than 2 scored samples or with all scores tied are dropped; unparseable judgments and empty
samples take no part. Every count is printed and written to <dset_save_name>/stats.yaml.

Output: <dset_save_name>/train.jsonl (train_mix.jsonl with p_ori_*), preference rows with score_chosen,
score_rejected, prompt_id and source (generated | original_pair | original_chosen): give the folder to run_dpo as
`dataset_mixer: {<dset_save_name>: 1.0}`. Rerunning the same command resumes: prompt ids already sampled or ranked
are skipped, and no judgment is paid for twice (<dset_save_name>/.work holds samples, judgments and rankings).
"""

from __future__ import annotations

import logging

from chatalign.configs import ChatalignParser, write_run_args
from chatalign.generation.params import GenerationArguments
from chatalign.judges.loading import JudgeArguments
from chatalign.synth.pairs import PairGenArguments

logger = logging.getLogger("gen_preference_pairs")


def make_parser() -> ChatalignParser:
    return ChatalignParser([PairGenArguments, GenerationArguments, JudgeArguments])


def main(argv=None, judge=None):
    """`judge`: a ready judge object instead of --judge's (tests, Python callers)."""
    args, gen_args, judge_args = make_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import functools
    import uuid

    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from chatalign.synth import pair_pipeline, pairs

    # Without a GPU, PartialState only joins the processes torchrun / `accelerate launch --multi_gpu` started when
    # told to use the CPU (gloo); otherwise every process would think it is alone and take every prompt.
    state = PartialState(cpu=not torch.cuda.is_available())
    token = [uuid.uuid4().hex]
    if state.num_processes > 1:
        broadcast_object_list(token)  # one id for this run, so the main process knows whose run files are new
    if state.is_main_process:
        write_run_args(args.dset_save_name, (args, gen_args, judge_args))
    with state.main_process_first():  # one process fills the datasets cache, the others read it
        prompts = pairs.load_prompts(args.prompt_dataset, args.prompt_dataset_split, args.max_samples, args.seed,
                                     args.prompt_dataset_format, args.skip_invalid)
    barrier = functools.partial(pair_pipeline.wait_for_shards, args.dset_save_name, state.num_processes, token[0])
    stats = pair_pipeline.run(args, gen_args, judge_args, rank=state.process_index, world_size=state.num_processes,
                              barrier=barrier, is_main=state.is_main_process, judge=judge, prompts=prompts,
                              progress=state.is_local_main_process, run_token=token[0])
    if stats is not None:
        print(pair_pipeline.format_stats(stats))
        for split, path in stats["files"].items():
            print(f"{split}: {path}")
    return stats


if __name__ == "__main__":
    main()
