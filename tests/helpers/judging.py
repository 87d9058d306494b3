"""A judge by length and a prompt, shared by the judge and preference-pair tests."""

import re

from chatalign.judges.models import FunctionJudge

PROMPT = [{"role": "user", "content": "Name a fruit."}]


def length_judge(**kwargs) -> FunctionJudge:
    """Longer is better; a response containing '?' gets no score (an unparseable verdict)."""
    return FunctionJudge("length", score=lambda p, r: None if "?" in r else float(len(r)), **kwargs)


def reply_in(messages) -> str:
    return re.search(r"\[Reply to rate\]\n(.*)\n\[End of reply\]", messages[-1]["content"], re.S).group(1)
