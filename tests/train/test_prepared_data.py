"""chatalign.train.prepared_data: TRL's DPO and KTO preparation kept on disk. A second trainer on the same rows,
tokenizer and settings loads the prepared rows (TRL's preparation is not run again) and gets exactly the rows,
length counts and KL setting of a fresh preparation; another setting, tokenizer or row prepares afresh."""

import copy
import logging

import pytest
from conftest import build_tiny_tokenizer
from datasets import Dataset
from helpers.preference import preference_rows, unpaired_rows
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

from chatalign.train.dpo.trainer import ChatalignDPOTrainer
from chatalign.train.kto import ChatalignKTOTrainer, NNPUKTOTrainer

BASE = dict(use_cpu=True, bf16=False, activation_checkpointing=False, report_to="none", per_device_train_batch_size=4)
DPO_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "prompt_id")
KTO_COLUMNS = ("prompt_ids", "completion_ids", "KL_completion_ids", "label")


@pytest.fixture
def trl_preparations(monkeypatch):
    """How many times TRL's own _prepare_dataset ran."""
    calls = []
    for trainer_class in (DPOTrainer, KTOTrainer):
        original = trainer_class._prepare_dataset

        def counted(self, *args, _original=original, **kwargs):
            calls.append(type(self).__name__)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(trainer_class, "_prepare_dataset", counted)
    return calls


def build(trainer_class, config_class, model_dir, tokenizer, rows, tmp_path, cache=True, trainer_kwargs=None,
          **config):
    args = config_class(output_dir=str(tmp_path / "out"), **{**BASE, **config})
    return trainer_class(model=AutoModelForCausalLM.from_pretrained(model_dir), ref_model=None, args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer, cache_prepared_data=cache,
                         prepared_data_cache_dir=str(tmp_path / "cache"), **(trainer_kwargs or {}))


def test_a_second_dpo_trainer_loads_the_prepared_rows(tiny_model_dir, tmp_path, trl_preparations, caplog):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = preference_rows(12)
    dpo = dict(max_length=30, precompute_ref_log_probs=False)
    uncached = build(ChatalignDPOTrainer, DPOConfig, tiny_model_dir, tokenizer, rows, tmp_path, cache=False, **dpo)
    first = build(ChatalignDPOTrainer, DPOConfig, tiny_model_dir, tokenizer, rows, tmp_path, **dpo)
    assert len(trl_preparations) == 2 and list((tmp_path / "cache" / "dpo_tokens").iterdir())
    with caplog.at_level(logging.INFO, logger="chatalign.data.dataset_cache"):
        second = build(ChatalignDPOTrainer, DPOConfig, tiny_model_dir, tokenizer, rows, tmp_path, **dpo)
    assert len(trl_preparations) == 2  # loaded: TRL's preparation did not run
    assert "train rows: loaded" in caplog.text
    # max_length drops pairs whose prompt fills it: a short one drops some, and the cache keeps exactly those out.
    assert 0 < len(second.train_dataset) < len(rows)
    for trainer in (first, second):
        for column in DPO_COLUMNS:
            assert trainer.train_dataset[column] == uncached.train_dataset[column], column

    # Another max_length, truncation mode, tokenizer or row is another preparation.
    build(ChatalignDPOTrainer, DPOConfig, tiny_model_dir, tokenizer, rows, tmp_path, **{**dpo, "max_length": 32})
    build(ChatalignDPOTrainer, DPOConfig, tiny_model_dir, tokenizer, rows, tmp_path,
          **{**dpo, "truncation_mode": "keep_end"})
    edited = copy.deepcopy(rows)
    edited[5]["chosen"][0]["content"] += " Edited."
    build(ChatalignDPOTrainer, DPOConfig, tiny_model_dir, tokenizer, edited, tmp_path, **dpo)
    assert len(trl_preparations) == 5
    other = build_tiny_tokenizer(tmp_path / "other_tokenizer", vocab_size=900)
    other.chat_template = tokenizer.chat_template
    build(ChatalignDPOTrainer, DPOConfig, tiny_model_dir, other, rows, tmp_path, **dpo)
    assert len(trl_preparations) == 6


def kto_trainer(tiny_model_dir, tokenizer, rows, tmp_path, trainer_class=ChatalignKTOTrainer, cache=True,
                trainer_kwargs=None, **config):
    kwargs = {"max_prompt_length": 12, **(trainer_kwargs or {})}
    return build(trainer_class, KTOConfig, tiny_model_dir, tokenizer, rows, tmp_path, cache=cache,
                 trainer_kwargs=kwargs, **{"max_length": 40, **config})


def test_a_second_kto_trainer_loads_the_rows_and_their_counts(tiny_model_dir, tmp_path, trl_preparations):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = unpaired_rows(16)
    uncached = kto_trainer(tiny_model_dir, tokenizer, rows, tmp_path, cache=False)
    first = kto_trainer(tiny_model_dir, tokenizer, rows, tmp_path)
    second = kto_trainer(tiny_model_dir, tokenizer, rows, tmp_path)
    assert len(trl_preparations) == 2  # the uncached one and the first cached one
    counts = uncached.data_counts["train"]
    assert counts.get("prompt truncated (max_prompt_length)", 0) + counts.get("dropped: prompt fills max_length", 0)
    for trainer in (first, second):
        assert trainer.data_counts == uncached.data_counts and trainer.calculate_KL
        for column in KTO_COLUMNS:
            assert trainer.train_dataset[column] == uncached.train_dataset[column], column
    # The KL rotation runs within batch-sized blocks: another batch size is another preparation.
    kto_trainer(tiny_model_dir, tokenizer, rows, tmp_path, per_device_train_batch_size=2)
    kto_trainer(tiny_model_dir, tokenizer, rows, tmp_path, trainer_kwargs={"max_prompt_length": 8})
    assert len(trl_preparations) == 4


def test_nnpu_loads_its_pairs_and_keeps_the_kl_forward_off(tiny_model_dir, tmp_path, trl_preparations):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [row for i in range(8) for row in ({**unpaired_rows(16)[i], "label": True},
                                              {**unpaired_rows(16)[i + 8], "label": False})]
    nnpu = {"prior": 0.3}
    uncached = kto_trainer(tiny_model_dir, tokenizer, rows, tmp_path, NNPUKTOTrainer, cache=False,
                           trainer_kwargs=nnpu)
    kto_trainer(tiny_model_dir, tokenizer, rows, tmp_path, NNPUKTOTrainer, trainer_kwargs=nnpu)
    loaded = kto_trainer(tiny_model_dir, tokenizer, rows, tmp_path, NNPUKTOTrainer, trainer_kwargs=nnpu)
    assert len(trl_preparations) == 2
    assert not loaded.calculate_KL and "KL_completion_ids" not in loaded.train_dataset.column_names
    assert loaded.data_counts == uncached.data_counts
    for column in ("prompt_ids", "completion_ids", "label"):
        assert loaded.train_dataset[column] == uncached.train_dataset[column], column
    # ChatalignKTOTrainer on the same rows is not NNPUKTOTrainer's preparation.
    kto_trainer(tiny_model_dir, tokenizer, rows, tmp_path)
    assert len(trl_preparations) == 3
