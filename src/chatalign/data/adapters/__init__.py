"""Built-in dataset-format adapters: raw rows of common chat/preference formats -> canonical chatalign rows.

Each adapter registers itself in :mod:`chatalign.data.registry` when its module is imported; the modules are imported
here in a fixed order, because the registration order is the tie-break among adapters of equal priority in
auto-detection. :mod:`chatalign.data` imports this package, so the built-in formats are always known.

Formats: the canonical schemas and TRL's standard and implicit-prompt variants (:mod:`.canonical`); Hugging Face H4
UltraChat-200k and UltraFeedback-binarized, Alpaca and ShareGPT with LLaMA-Factory's variants (:mod:`.chat_formats`);
tool-integrated math, ToRA / RLHF4MATH (:mod:`.math_code`); Open-Assistant message trees (:mod:`.oasst`); WMT19 / TED
Talks translation pairs as prompted chats, and Open-Assistant's ``wmt2019_<pair>`` / ``ted_trans_<pair>`` mixer names
(:mod:`.translation`). Helpers usable on their own are re-exported here.
"""

from chatalign.data.adapters.canonical import split_shared_prompt
from chatalign.data.adapters.chat_formats import sharegpt_message
from chatalign.data.adapters.math_code import answers_match, split_code_outputs
from chatalign.data.adapters.oasst import oasst_trees_to_conversations
from chatalign.data.adapters.translation import translation_corpus, translation_messages

__all__ = ["answers_match", "oasst_trees_to_conversations", "sharegpt_message", "split_code_outputs",
           "split_shared_prompt", "translation_corpus", "translation_messages"]
