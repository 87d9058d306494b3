"""Synthetic training data: self-play data (real answers against the model's own, :mod:`.selfplay`) and on-policy
preference pairs (samples ranked by a judge, :mod:`.pairs` for the rules, :mod:`.pair_pipeline` for the sharded,
resumable run)."""



