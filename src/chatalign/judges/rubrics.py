"""UltraFeedback's rating rubrics (1 to 5) for an LLM judge: one response or several in one prompt, and the parsing of
the "#### Output for Text k / Rating: n" answers.

SOURCE (the prompt texts below are data, kept word for word, typos included, with LF line ends instead of CRLF):
- "helpfulness": OpenBMB/UltraFeedback, src/data_annotation/preference_templates.py (commit bf80fd4),
  `helpfulness_template_without_answer` -- the aspect that "emphasizes **Overall Quality**"; UltraFeedback's own
  repository has per-aspect rubrics only (instruction following, honesty, truthfulness, helpfulness).
- "overall" (the default): argilla-io/distilabel, src/distilabel/steps/tasks/templates/ultrafeedback/
  overall-rating.jinja2 (commit fbcaf6f), Argilla's overall-quality aspect in UltraFeedback's format: one holistic
  1-5 rating over the four UltraFeedback aspects.
- The system prompt of both: UltraFeedback's `system_prompt` (same file), its "four text outputs" said for the
  number of texts shown (its last sentence, that the texts are independent, only when there are several).
The format and annotation sections are generated for any number of texts exactly as the templates write them for
four (UltraFeedback's annotate_preference.py rates four texts in one prompt; distilabel's template loops over them).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from chatalign.judges.cache import Judgment
from chatalign.judges.prompts import render_conversation


@dataclass(frozen=True)
class Rubric:
    name: str
    criteria: str           # the assessment text, before the format section
    format_heading: str     # what opens the format section
    instruction_hint: str   # the placeholder of the instruction in the format section
    first_output: str       # the answer lines the format asks for text 1
    other_output: str       # ... and for every further text
    scale: tuple[float, float] = (1.0, 5.0)


_OVERALL_CRITERIA = "\n".join([
    "# General Text Quality Assessment",
    "",
    "Evaluate the model's outputs based on various criteria:",
    "",
    "1. **Correctness & Informativeness**: Does the output provide accurate and helpful information?",
    "2. **Honesty & Uncertainty**: How confidently does the model convey its information, and does it express "
    "uncertainty appropriately?",
    "3. **Truthfulness & Hallucination**: Does the model introduce misleading or fabricated details?",
    "4. **Instruction Following**: Does the model's output align with given instructions and the user's intent?",
    "",
    "Your role is to provide a holistic assessment considering all the above factors.",
    "",
    "**Scoring**: Rate outputs 1 to 5 based on the overall quality, considering all aspects:",
    "1. **Low Quality**: Contains inaccuracies, may be entirely wrong or has severe hallucinations.",
    "2. **Moderate Quality**: Addresses some aspects, but has errors or is partially aligned with instructions.",
    "3. **Good**: Generally accurate but may contain minor errors or slight deviations.",
    "4. **Very Good**: Near perfect, with minor issues in terms of alignment or confidence.",
    "5, **Excellent**: Accurate, confident, aligned with instructions, and free of hallucinations.",
])

_HELPFULNESS_CRITERIA = "\n".join([
    "# Informativeness / Helpfulness Assessment",
    "",
    "Evaluate if model's outputs fulfill task objectives and provide high-quality, correct, and, informative content.",
    "",
    "Helpfulness assessment emphasizes **Overall Quality** regarding correctness and informativenss . ",
    "",
    "**Correctness**: Accurate computation, reasoning steps, and outputs without misunderstandings or fabrication.",
    "",
    'Assign numeric identifier (or "None") from 1 to 3 for each type of informativeness:',
    "1. **Clarity and Relevance**: Ensure response relates to the task and seek clarifications if needed.",
    "2. **Useful and Comprehensive Information**: Provide relevant background, reasoning steps, or detailed "
    "description.",
    "3. **Not Lengthy, No Repetition**: Avoid verbosity or recycling content.",
    "",
    "Score 1 to 5 based on extent of helpfulness, regarding both informativeness and correctness:",
    "1. **Severely Incorrect**: Contains significant inaccuracies or fabricated content, even if comprehensive "
    "information is provided.",
    "2. **Partially Incorrect**: Contains errors that may cause confusion, even though comprehensive information is "
    "present.",
    "3. **Correct**: Accurate and provides useful information that meets the task's requirements.",
    "4. **Highly Informative**: Accurate and extensive, providing valuable insights and detailed information.",
    "5. **Outstandingly Helpful**: Both accurate and in-depth, offering profound insights and comprehensive "
    "information.",
])

RUBRICS = {
    "overall": Rubric(
        "overall", _OVERALL_CRITERIA, "## Format:", "[Clearly specify the task goal and restrictions]",
        "Rating: [Rating for text 1]\nRationale: [Rationale for the rating in short sentences]",
        "Rating: [Rating]\nRationale: [Rationale]"),
    "helpfulness": Rubric(
        "helpfulness", _HELPFULNESS_CRITERIA, "---\n\n## Format", "[Specify task goal and restrictions]",
        'Type: [List of numeric identifiers (or "None") for informativeness type, separated by commas]\n'
        "Rationale: [Rationale for the identification in short sentences]\nRating: [Rating for text 1]\n"
        "Rationale: [Rationale for the rating in short sentencs]",
        "Type: [List of types]\nRationale: [Rationale]\nRating: [Rating]\nRationale: [Rationale]"),
}
DEFAULT_RUBRIC = "overall"
_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def get_rubric(name: str) -> Rubric:
    if name not in RUBRICS:
        raise ValueError(f"rubric must be one of {', '.join(RUBRICS)}, got {name!r}")
    return RUBRICS[name]


def rubric_system_prompt(count: int) -> str:
    """UltraFeedback's system prompt for `count` texts."""
    word = _COUNT_WORDS.get(count, str(count))
    lines = ["Your role is to evaluate text quality based on given criteria.",
             f'You\'ll receive an instructional description ("Instruction") and {word} text '
             f'{"output" if count == 1 else "outputs"} ("Text").',
             "Understand and interpret instructions to evaluate effectively.",
             "Provide annotations for each text with a rating and rationale."]
    if count > 1:
        lines.append(f"The {word} texts given are independent, and should be evaluated separately.")
    return "\n".join(lines)


def rubric_instruction(prompt: Sequence[dict]) -> str:
    """The "Instruction" shown: a lone user message's text, else the conversation as the LLM judge reads it."""
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return render_conversation(prompt)


def rubric_prompt(rubric: Rubric, instruction: str, texts: Sequence[str]) -> str:
    """The user message: the rubric, its format for len(texts) texts, then the annotation input."""
    numbers = range(1, len(texts) + 1)
    slots = "\n".join(f"<text {i}> [Text {i}]" for i in numbers)
    outputs = "\n\n".join(f"#### Output for Text {i}\n{rubric.first_output if i == 1 else rubric.other_output}"
                          for i in numbers)
    filled = "\n".join(f"<text {i}> {text}" for i, text in zip(numbers, texts, strict=True))
    return (f"{rubric.criteria}\n\n{rubric.format_heading}\n\n### Input\nInstruction: {rubric.instruction_hint}\n\n"
            f"Texts:\n{slots}\n\n### Output\n{outputs}\n\n---\n\n## Annotation\n\n### Input\n"
            f"Instruction: {instruction}\n\nTexts:\n{filled}\n\n### Output\n")


def rubric_messages(rubric: Rubric, prompt: Sequence[dict], texts: Sequence[str]) -> list[dict]:
    return [{"role": "system", "content": rubric_system_prompt(len(texts))},
            {"role": "user", "content": rubric_prompt(rubric, rubric_instruction(prompt), texts)}]


def rubric_fingerprint(rubric: Rubric) -> str:
    """A hash of everything the judge is shown for one and for two texts: any change to a text changes it."""
    shown = [m["content"] for n in (1, 2) for m in rubric_messages(rubric, [{"role": "user", "content": "{i}"}],
                                                                    [f"{{t{k}}}" for k in range(n)])]
    return hashlib.sha256("\n\x00".join(shown).encode()).hexdigest()[:10]


# A section heading: "#### Output for Text 2", "**Text 2**:", "Text 2:" (alone on its line or before "Rating").
_SECTION = re.compile(r"^[ \t>#*_]*(?:output\s+for\s+)?<?\s*text\s*(\d+)\s*>?[ \t*_:.-]*(?=$|rating)", re.I | re.M)
# "Rating: 4", "**Rating:** 4", "Rating: [4]", "Rating: 4/5", "Rating: N/A"; a placeholder "[Rating ...]" is no match.
_RATING = re.compile(r"rating\s*\**\s*[:=]\s*\**\s*\[*\s*(n\s*/\s*a\b|\d+(?:\.\d+)?)", re.I)


def _value(match: str, scale: tuple[float, float]) -> float | None:
    if match[0].isdigit():
        value = float(match)
        return value if scale[0] <= value <= scale[1] else None
    return None  # N/A


def parse_rubric_ratings(text: str | None, count: int, scale: tuple[float, float] = (1.0, 5.0)) -> list[float | None]:
    """The ratings of texts 1..count in a rubric answer (None: no rating, "N/A", or outside the scale).

    With "Output for Text k" (or "Text k:") headings, text k's rating is the first "Rating:" of its section (the
    last section of that number holding one, so an echoed format block is passed over). Without headings, the
    "Rating:" values in order when there are exactly `count` of them (one text: the last one); otherwise none.
    """
    if not text:
        return [None] * count
    heads = [(m.start(), int(m.group(1))) for m in _SECTION.finditer(text)]
    if heads:
        found: dict[int, float | None] = {}
        for (start, number), nxt in zip(heads, [*(s for s, _ in heads[1:]), len(text)], strict=True):
            rating = _RATING.search(text, start, nxt)
            if rating is not None and 1 <= number <= count:
                found[number] = _value(rating.group(1), scale)
        return [found.get(k) for k in range(1, count + 1)]
    ratings = [_value(m, scale) for m in _RATING.findall(text)]
    if count == 1 and ratings:
        return [ratings[-1]]
    return ratings if len(ratings) == count else [None] * count


class RubricJudge:
    """An LLM judge (anything with `complete_many`, e.g. judges.models.LLMJudge) asked with a rubric: score_batch
    rates one response (Judgment value = its rating), compare_batch rates two in one prompt (value = P(text 1 better):
    1, 0 or 0.5 from the two ratings; the raw answer holds both, parse_rubric_ratings(raw, 2) reads them). The
    completers of judges.models generate greedily (temperature 0), like UltraFeedback's annotation. The name adds
    the rubric and its fingerprint to the LLM's, so judgments under another prompt are never reused."""

    pointwise, pairwise = True, True

    def __init__(self, llm, rubric: Rubric):
        self.llm, self.rubric = llm, rubric
        self.name = f"{llm.name}|rubric:{rubric.name}:{rubric_fingerprint(rubric)}"
        self.chunk_size = getattr(llm, "chunk_size", 8)

    def _ask(self, conversations: list[list[dict]]) -> list[str | None]:
        if hasattr(self.llm, "calls"):
            self.llm.calls += len(conversations)
        answers = list(self.llm.complete_many(conversations))
        if len(answers) != len(conversations):
            raise RuntimeError(f"LLM judge {self.llm.name}: {len(answers)} answers for {len(conversations)} requests")
        return answers

    def score_batch(self, requests):
        answers = self._ask([rubric_messages(self.rubric, prompt, [response]) for prompt, response in requests])
        return [None if a is None else Judgment(parse_rubric_ratings(a, 1, self.rubric.scale)[0], a) for a in answers]

    def compare_batch(self, requests):
        answers = self._ask([rubric_messages(self.rubric, prompt, [a, b]) for prompt, a, b in requests])
        out = []
        for answer in answers:
            if answer is None:
                out.append(None)
                continue
            first, second = parse_rubric_ratings(answer, 2, self.rubric.scale)
            p = None if first is None or second is None else 1.0 if first > second else 0.0 if first < second else 0.5
            out.append(Judgment(p, answer))
        return out


def is_llm_judge(judge) -> bool:
    return callable(getattr(judge, "complete_many", None))
