"""Training: model loading (:mod:`.models`), what every run shares (:mod:`.run`), SFT rendering (:mod:`.sft`), DPO
(:mod:`.dpo`: trainer, data selection, reference log-probs) and KTO / nnPU-KTO (:mod:`.kto`)."""
