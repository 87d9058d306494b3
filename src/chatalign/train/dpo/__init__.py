"""DPO for chatalign, used by scripts/run_dpo.py and scripts/precompute_ref_logprobs.py.

- :mod:`.arguments`: the recipe keys run_dpo adds to TRL's DPOConfig, checked before anything is loaded.
- :mod:`.selection`: which pairs a run trains on (max_data_size, preference_config) and their loss weights.
- :mod:`.reference`: precomputed reference log-probs, keyed by pair id, and what they depend on.
- :mod:`.trainer`: TRL's DPOTrainer with per-pair loss weights and given reference log-probs.
"""



