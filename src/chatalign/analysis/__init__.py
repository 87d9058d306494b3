"""Analysis of preference data and trained models: dataset prediction, implicit rewards, importance weights.

Built on :mod:`chatalign.train` (log-probs), :mod:`chatalign.judges` and :mod:`chatalign.store`; not built yet (see the
analysis issue).
"""
