"""Evaluation of trained models (MT-Bench, AlpacaEval 2.0, Arena-Hard-Auto, lm-eval-harness) and the results browser.

Built on :mod:`chatalign.generation` for answers, :mod:`chatalign.judges` for verdicts and :mod:`chatalign.store` for
resuming; not built yet (see the evaluation issue).
"""
