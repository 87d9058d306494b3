"""Analysis of preference data and trained models (LION's analysis scripts), each behind a script in scripts/.

Modules: :mod:`.dset_prediction` and :mod:`.classifier` (can a classifier tell datasets apart: dset_prediction.py),
:mod:`.sequence_logps` (summed response log-probs of pairs under any model, TRL's numbers, cached), :mod:`.lm_reward`
(implicit DPO rewards and LION's weight: compute_lm_reward.py), :mod:`.importance` (log mu(y|x) under candidate
generators: compute_importance_weight.py), :mod:`.preference_prediction` (reward-model agreement with the labels:
predict_preference.py). What feeds back into DPO (rm_importance selection, wis weights) is read by
:mod:`chatalign.train.dpo.importance`, one layer down.
"""
