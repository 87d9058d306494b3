"""Kills a training process right after it writes checkpoint N (env CHATALIGN_KILL_AFTER_STEP), like a lost node.

Put this folder first on PYTHONPATH of a subprocess; Python imports sitecustomize at start-up. The scripts under test
know nothing about it.
"""

import os

_STEP = int(os.environ.get("CHATALIGN_KILL_AFTER_STEP", "0") or 0)

if _STEP:
    import transformers

    _original = transformers.Trainer._save_checkpoint

    def _save_then_die(self, model, trial):
        _original(self, model, trial)
        if self.state.global_step >= _STEP:
            os._exit(137)  # no cleanup, no final save: a hard kill

    transformers.Trainer._save_checkpoint = _save_then_die
