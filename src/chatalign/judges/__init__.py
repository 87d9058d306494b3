"""Judges that score or compare chat responses, a cache so no judgment is paid for twice, and the PairRM-style
tournament that turns pairwise comparisons into scores.

Judge specs (`--judge` of gen_preference_pairs.py, `--judge_model` of judge_dataset.py):

    reward_model:<path>   an AutoModelForSequenceClassification checkpoint with a trained score head (one whose head
                          did not load is an error); score = the logit (num_labels 1), or logit[1] - logit[0]
                          (num_labels 2). Pointwise. Alias: rm:<path>
    pairrm:<path>         llm-blender's PairRM (llm-blender/PairRM-hf), comparing the two candidates side by side:
                          P(candidate 1 is better) = sigmoid(logit). Pairwise. See chatalign.judges.pairrm.
    llm:<target>          an LLM asked with the prompts below: a 1-10 rating per response ("Rating: [[7]]"), or a
                          verdict per pair ("[[A]]" / "[[B]]" / "[[C]]" for a tie). Pointwise and pairwise. target:
                            a local checkpoint folder     -> generated in process (greedy, transformers)
                            http(s)://host:port/v1        -> an OpenAI-compatible server, the model it lists first
                            <model>@http(s)://host/v1     -> that server, that model
                            <model>                       -> judge_base_url (default the OpenAI API) with that model

Rules every caller relies on:
  - A judgment is cached under its judgment key (chatalign.store.judgment_key: judge name, kind, prompt,
    response(s)); the judge name carries everything that
    changes a verdict (kind, checkpoint path or model@url, for LLM judges a hash of the prompt text and max tokens).
    Identical texts therefore always get identical judgments, within a run and across runs.
  - An LLM answer without a parseable verdict is a judgment with value None ("unparseable"); it is cached (asking
    the same greedy judge again gives the same answer) and counted by callers. A request that failed outright
    (the client returned nothing) is not cached, so a rerun retries it.
  - Tournament (pairwise judges): every pair of samples is compared, by default in both orders; the pair's
    probability is the mean of P(i over j) and 1 - P(j over i) over the orders that parsed. > 0.5: i wins 1 point,
    < 0.5: j does, exactly 0.5: half a point each; a pair with no parsed order gives no points and counts as
    unparseable. A sample's score is its points (0 .. n-1). Identical texts are a tie without a judge call.

Modules: :mod:`.prompts` (LLM judge prompts and verdict parsing), :mod:`.cache` (judgments and the cache),
:mod:`.tournament` (pairwise comparisons to scores), :mod:`.models` (the judges), :mod:`.loading` (specs to judges),
:mod:`.rubrics` (UltraFeedback's 1-5 rating rubrics, one text or several in one prompt), :mod:`.annotate`
(re-annotating a preference set: judge_dataset's single / all / pairwise modes).
"""



