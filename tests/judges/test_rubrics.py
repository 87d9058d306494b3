"""chatalign.judges.rubrics: UltraFeedback's rating prompts (one text or two in one prompt) and their parsing."""

from __future__ import annotations

import pytest

from chatalign.judges.models import LLMJudge
from chatalign.judges.rubrics import (
    RUBRICS,
    RubricJudge,
    get_rubric,
    parse_rubric_ratings,
    rubric_fingerprint,
    rubric_instruction,
    rubric_messages,
)

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]

# The golden texts: the "overall" rubric word for word (argilla-io/distilabel overall-rating.jinja2, rendered).
OVERALL_HEAD = """# General Text Quality Assessment

Evaluate the model's outputs based on various criteria:

1. **Correctness & Informativeness**: Does the output provide accurate and helpful information?
2. **Honesty & Uncertainty**: How confidently does the model convey its information, and does it express \
uncertainty appropriately?
3. **Truthfulness & Hallucination**: Does the model introduce misleading or fabricated details?
4. **Instruction Following**: Does the model's output align with given instructions and the user's intent?

Your role is to provide a holistic assessment considering all the above factors.

**Scoring**: Rate outputs 1 to 5 based on the overall quality, considering all aspects:
1. **Low Quality**: Contains inaccuracies, may be entirely wrong or has severe hallucinations.
2. **Moderate Quality**: Addresses some aspects, but has errors or is partially aligned with instructions.
3. **Good**: Generally accurate but may contain minor errors or slight deviations.
4. **Very Good**: Near perfect, with minor issues in terms of alignment or confidence.
5, **Excellent**: Accurate, confident, aligned with instructions, and free of hallucinations.

## Format:

### Input
Instruction: [Clearly specify the task goal and restrictions]

"""

SINGLE_SYSTEM = """Your role is to evaluate text quality based on given criteria.
You'll receive an instructional description ("Instruction") and one text output ("Text").
Understand and interpret instructions to evaluate effectively.
Provide annotations for each text with a rating and rationale."""

SINGLE_USER = OVERALL_HEAD + """Texts:
<text 1> [Text 1]

### Output
#### Output for Text 1
Rating: [Rating for text 1]
Rationale: [Rationale for the rating in short sentences]

---

## Annotation

### Input
Instruction: What is the capital of France?

Texts:
<text 1> Paris.

### Output
"""

ALL_SYSTEM = """Your role is to evaluate text quality based on given criteria.
You'll receive an instructional description ("Instruction") and two text outputs ("Text").
Understand and interpret instructions to evaluate effectively.
Provide annotations for each text with a rating and rationale.
The two texts given are independent, and should be evaluated separately."""

ALL_USER = OVERALL_HEAD + """Texts:
<text 1> [Text 1]
<text 2> [Text 2]

### Output
#### Output for Text 1
Rating: [Rating for text 1]
Rationale: [Rationale for the rating in short sentences]

#### Output for Text 2
Rating: [Rating]
Rationale: [Rationale]

---

## Annotation

### Input
Instruction: What is the capital of France?

Texts:
<text 1> Lyon.
<text 2> Paris.

### Output
"""


def test_single_prompt_is_the_overall_rubric_for_one_text():
    assert rubric_messages(get_rubric("overall"), FRANCE, ["Paris."]) == [
        {"role": "system", "content": SINGLE_SYSTEM}, {"role": "user", "content": SINGLE_USER}]


def test_all_prompt_rates_two_texts_in_one_prompt():
    assert rubric_messages(get_rubric("overall"), FRANCE, ["Lyon.", "Paris."]) == [
        {"role": "system", "content": ALL_SYSTEM}, {"role": "user", "content": ALL_USER}]


def test_helpfulness_rubric_keeps_ultrafeedbacks_layout():
    user = rubric_messages(get_rubric("helpfulness"), FRANCE, ["Lyon.", "Paris."])[1]["content"]
    assert user.startswith("# Informativeness / Helpfulness Assessment\n\nEvaluate if model's outputs fulfill")
    assert "regarding correctness and informativenss . \n\n**Correctness**" in user  # upstream's text, typo included
    assert ("\n\n---\n\n## Format\n\n### Input\nInstruction: [Specify task goal and restrictions]\n\nTexts:\n"
            "<text 1> [Text 1]\n<text 2> [Text 2]\n\n### Output\n#### Output for Text 1\nType: ") in user
    assert user.endswith("#### Output for Text 2\nType: [List of types]\nRationale: [Rationale]\nRating: [Rating]\n"
                         "Rationale: [Rationale]\n\n---\n\n## Annotation\n\n### Input\nInstruction: What is the "
                         "capital of France?\n\nTexts:\n<text 1> Lyon.\n<text 2> Paris.\n\n### Output\n")


def test_fingerprints_pin_the_prompt_texts():
    # A change to any text shown to the judge changes these, and with them every cached judgment's key.
    assert {name: rubric_fingerprint(r) for name, r in RUBRICS.items()} == {
        "overall": "348bda97da", "helpfulness": "da7c7b12b9"}
    with pytest.raises(ValueError, match="rubric must be one of overall, helpfulness, got 'honesty'"):
        get_rubric("honesty")


def test_instruction_of_a_conversation():
    assert rubric_instruction(FRANCE) == "What is the capital of France?"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Capital of Peru?"}]
    assert rubric_instruction(chat) == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello\n\nUser: Capital of Peru?"


TWO_TEXTS = [
    # the format asked for
    ("#### Output for Text 1\nRating: 4\nRationale: Correct and clear.\n\n#### Output for Text 2\nRating: 2\n"
     "Rationale: Wrong city.", [4.0, 2.0]),
    # markdown-bold keys and a '/5' suffix
    ("**Output for Text 1**\n**Rating:** 5/5\n**Rationale:** Accurate.\n\n**Output for Text 2**\n**Rating**: 3\n"
     "**Rationale:** Vague.", [5.0, 3.0]),
    # the format block echoed first (placeholders only), then the real annotation
    ("### Output\n#### Output for Text 1\nRating: [Rating for text 1]\nRationale: [Rationale]\n\n"
     "#### Output for Text 2\nRating: [Rating]\nRationale: [Rationale]\n\nMy annotation:\n\n"
     "#### Output for Text 1\nRating: 3\nRationale: Ok.\n\n#### Output for Text 2\nRating: 5\nRationale: Best.",
     [3.0, 5.0]),
    # sections in another order, '<text k>' style headings
    ("Text 2:\nRating: 1\nRationale: Off topic.\n\nText 1:\nRating: 4\nRationale: Good.", [4.0, 1.0]),
    ("<text 1> Rating: [2]\n<text 2> Rating: 4", [2.0, 4.0]),
    # no headings: two ratings in order
    ("Rating: 4\nRationale: fine\n\nRating: 3\nRationale: less fine", [4.0, 3.0]),
    # N/A, out of the 1..5 scale, a missing section
    ("#### Output for Text 1\nRating: N/A\nRationale: Creative task.\n\n#### Output for Text 2\nRating: 4\n"
     "Rationale: Good.", [None, 4.0]),
    ("#### Output for Text 1\nRating: 8\nRationale: Great.\n\n#### Output for Text 2\nRating: 0\n", [None, None]),
    ("#### Output for Text 1\nRating: 4\nRationale: The output was cut off here", [4.0, None]),
    # no headings and not exactly two ratings: ambiguous, so none
    ("Rating: 4", [None, None]),
    ("I cannot evaluate these texts.", [None, None]),
    ("", [None, None]),
    (None, [None, None]),
]


@pytest.mark.parametrize("text, expected", TWO_TEXTS)
def test_parse_two_ratings(text, expected):
    assert parse_rubric_ratings(text, 2) == expected


@pytest.mark.parametrize("text, expected", [
    ("#### Output for Text 1\nRating: 4\nRationale: Correct.", 4.0),
    ("Type: 1, 2\nRationale: Relevant.\nRating: 3\nRationale: Correct but short.", 3.0),  # helpfulness' layout
    ("Rating: [Rating for text 1]\n...\nRating: 2", 2.0),   # one text: the last value wins
    ("Rating: 4.5\nRationale: between", 4.5),
    ("Rating: N/A", None),
    ("Rating: 6", None),
    ("Overall a fine answer, I'd say four.", None),
])
def test_parse_one_rating(text, expected):
    assert parse_rubric_ratings(text, 1) == [expected]


def test_rubric_judge_rates_through_the_llm():
    answers = {"Paris.": 5, "Lyon.": 1, "Marseille.": 1}
    seen = []

    def complete(messages):
        seen.append(messages)
        texts = [line.split("> ", 1)[1] for line in messages[1]["content"].split("## Annotation")[1].splitlines()
                 if line.startswith("<text ")]
        if "Nice." in texts:
            return "no idea"
        return "\n\n".join(f"#### Output for Text {i}\nRating: {answers[t]}\nRationale: -"
                           for i, t in enumerate(texts, 1))

    llm = LLMJudge.from_callable(complete, "stub")
    judge = RubricJudge(llm, get_rubric("overall"))
    assert judge.name == f"{llm.name}|rubric:overall:348bda97da"
    assert RubricJudge(llm, get_rubric("helpfulness")).name != judge.name
    one = judge.score_batch([(FRANCE, "Paris."), (FRANCE, "Nice.")])
    assert [j.value for j in one] == [5.0, None] and one[1].raw == "no idea"
    both = judge.compare_batch([(FRANCE, "Paris.", "Lyon."), (FRANCE, "Lyon.", "Paris."),
                                (FRANCE, "Lyon.", "Marseille."), (FRANCE, "Nice.", "Paris.")])
    assert [j.value for j in both] == [1.0, 0.0, 0.5, None]
    assert both[0].raw.startswith("#### Output for Text 1\nRating: 5")
    assert llm.calls == 6 and seen[2] == rubric_messages(get_rubric("overall"), FRANCE, ["Paris.", "Lyon."])
    # a failed request (None) is no judgment at all, so the cache does not keep it
    failing = RubricJudge(LLMJudge(lambda conversations: [None] * len(conversations), "down"), get_rubric("overall"))
    assert failing.compare_batch([(FRANCE, "a", "b")]) == [None] and failing.score_batch([(FRANCE, "a")]) == [None]
