"""chatalign.data.adapters.translation: Open-Assistant's WMT19 / TED Talks rows as prompted chats through the mixer, the
wmt2019_<pair> / ted_trans_<pair> names and their hub calls, and the errors for pairs the corpora cannot serve."""

from collections import Counter

import datasets
import pytest
from helpers.rows import error_of, normalize, write_jsonl

from chatalign.data.adapters import translation
from chatalign.data.adapters.translation import TRANSLATION_PROMPTS, translation_corpus
from chatalign.data.mixer import check_mixer, mix_datasets
from chatalign.data.sources import MissingSplitError

SEED_LANGUAGES = {"ar", "de", "fr", "en", "it", "nl", "tr", "ru", "ms", "ko", "ja", "zh"}
HUB_ROWS = {"wmt19": [{"translation": {"de": f"Satz {i}.", "en": f"Sentence {i}."}} for i in range(4)],
            "ted_talks_iwslt": [{"translation": {"de": f"Rede {i}.", "ja": f"講演{i}。"}} for i in range(4)]}


def chats(dataset):
    return [[(m["role"], m["content"]) for m in row["messages"]] for row in dataset]


def mix_file(path, **kwargs):
    return mix_datasets({path: kwargs.pop("weight", 1.0)}, "sft", splits=["train"], shuffle=False, **kwargs).train


def filled(language, text):
    return {template.format(text) for template in TRANSLATION_PROMPTS[language]}


@pytest.fixture
def hub(monkeypatch):
    """datasets.load_dataset as the translation corpora see it: hub calls recorded and answered with small rows."""
    calls, real = [], datasets.load_dataset

    def load_dataset(path, *args, **kwargs):
        if path not in HUB_ROWS:
            return real(path, *args, **kwargs)
        calls.append((path, args, kwargs))
        return datasets.Dataset.from_list(HUB_ROWS[path])

    monkeypatch.setattr(translation.datasets, "load_dataset", load_dataset)
    return calls


def test_the_prompts_are_the_seeds_for_its_twelve_languages():
    assert set(TRANSLATION_PROMPTS) == SEED_LANGUAGES
    counts = {language: len(templates) for language, templates in TRANSLATION_PROMPTS.items()}
    assert counts == {"zh": 6, "ja": 6, "de": 5, "fr": 4, "ko": 4, "ms": 6, "en": 3, "ru": 3, "tr": 4, "it": 3,
                      "nl": 3, "ar": 3}
    assert all(t.count("{}") == 1 and t.count("{") == 1 for ts in TRANSLATION_PROMPTS.values() for t in ts)
    # Verbatim, the seed's odd spellings included: Turkish with combining dots, the French comma, Malay's six.
    assert TRANSLATION_PROMPTS["tr"][0] == "{}. t\u00fcrk\u00e7eye \u00e7evi\u0307ri\u0307n"
    assert TRANSLATION_PROMPTS["fr"][3] == "{} ,donnez moi la traduction fran\u00e7aise"
    assert TRANSLATION_PROMPTS["ms"][4:] == ("{}, Jemahan di bahasa melayu", "{}, jemahkan ayat ini kepada bahasa melayu")
    assert TRANSLATION_PROMPTS["zh"][3] == "翻译成中文: {}"


def test_a_local_wmt_file_through_the_mixer_gives_the_golden_chats(tmp_path):
    rows = [{"translation": {"de": f"Hallo Welt {i}.", "en": f"Hello world {i}."}} for i in range(6)]
    path = write_jsonl(tmp_path / "wmt19_de_en.jsonl", rows)
    golden = [
        [("user", "Hello world 0.: translate to german"), ("assistant", "Hallo Welt 0.")],
        [("user", "Hallo Welt 1. write in english"), ("assistant", "Hello world 1.")],
        [("user", "english translation: 'Hallo Welt 2.'"), ("assistant", "Hello world 2.")],
        [("user", "Hello world 3.: translate to german"), ("assistant", "Hallo Welt 3.")],
        [("user", "Hallo Welt 4. write in english"), ("assistant", "Hello world 4.")],
        [("user", "Hello world 5., Übersetzen ins Deutsche"), ("assistant", "Hallo Welt 5.")],
    ]
    assert chats(mix_file(path)) == golden  # auto-detected from the lone translation column
    assert chats(mix_file(path, weight={"fraction": 1.0, "format": "translation"})) == golden
    assert chats(mix_file(path, dataset_format="translation")) == golden
    # The choice follows the texts, not the key order the file happens to use.
    flipped = write_jsonl(tmp_path / "en_de.jsonl", [{"translation": {"en": r["translation"]["en"],
                                                                      "de": r["translation"]["de"]}} for r in rows])
    assert chats(mix_file(flipped)) == golden


def test_each_row_goes_one_way_with_a_target_language_prompt(tmp_path):
    rows = [{"translation": {"nl": f"Dit is zin {i}.", "en": f"This is sentence {i}."}} for i in range(40)]
    directions, used = Counter(), {"nl": set(), "en": set()}
    for row, chat in zip(rows, chats(mix_file(write_jsonl(tmp_path / "ted.jsonl", rows))), strict=True):
        (role_u, user), (role_a, answer) = chat
        assert (role_u, role_a) == ("user", "assistant")
        texts = row["translation"]
        target = "nl" if answer == texts["nl"] else "en"
        source = "en" if target == "nl" else "nl"
        assert answer == texts[target] and user in filled(target, texts[source])
        directions[f"{source}->{target}"] += 1
        used[target].add(next(t for t in TRANSLATION_PROMPTS[target] if t.format(texts[source]) == user))
    assert directions["en->nl"] > 5 and directions["nl->en"] > 5
    assert used == {"nl": set(TRANSLATION_PROMPTS["nl"]), "en": set(TRANSLATION_PROMPTS["en"])}


def test_every_language_is_prompted_with_its_own_templates(tmp_path):
    # One file mixing eleven pairs: it reads back with every language's column, None where a row lacks it.
    rows = [{"translation": {language: f"{language}-{i}", "en": f"en-{language}-{i}"}}
            for language in sorted(SEED_LANGUAGES - {"en"}) for i in range(80)]
    used = {language: set() for language in SEED_LANGUAGES}
    for row, chat in zip(rows, chats(mix_file(write_jsonl(tmp_path / "mixed.jsonl", rows))), strict=True):
        (_, user), (_, answer) = chat
        (target,) = [language for language, text in row["translation"].items() if text == answer]
        (source,) = set(row["translation"]) - {target}
        match = [t for t in TRANSLATION_PROMPTS[target] if t.format(row["translation"][source]) == user]
        assert len(match) == 1, (row, chat)
        used[target].add(match[0])
    assert used == {language: set(templates) for language, templates in TRANSLATION_PROMPTS.items()}


def test_bad_translation_rows_are_located_or_counted():
    good = {"translation": {"de": "Ja.", "en": "Yes."}}
    one_language = {"translation": {"de": "Nein.", "en": None}}
    error = error_of([good, one_language], "sft", adapter="translation")
    assert (error.row, error.field, error.reason) == (1, "translation", "missing value")
    error = error_of([good, {"translation": {"de": "  ", "en": "Blank."}}], "sft", adapter="translation")
    assert (error.row, error.field, error.reason) == (1, "translation.de", "empty content")
    error = error_of([{"translation": {"cs": "Ano.", "en": "Yes."}}], "sft", adapter="translation")
    assert (error.row, error.field) == (0, "translation.cs") and "no translation prompts for language 'cs'" in str(error)
    kept, skipped = normalize([good, one_language, good], "sft", adapter="translation", skip_invalid=True)
    assert len(kept) == 2 and skipped == Counter({"missing value": 1})


def test_hub_names_load_the_corpora_as_the_seed_does(hub):
    mixed = mix_datasets({"wmt2019_de-en": 1.0, "ted_trans_de-ja": 1.0}, "sft", splits=["train", "test"],
                         test_split_size=1, shuffle=False)
    assert hub == [
        ("wmt19", ("de-en",), {"split": "train[:100001]"}),
        ("wmt19", ("de-en",), {"split": "validation[:100001]"}),  # wmt19's validation split is the test split
        ("ted_talks_iwslt", (), {"language_pair": ["de", "ja"], "year": "2016", "split": "train[:100001]"}),
    ]
    assert Counter(mixed.train["source"]) == {"wmt2019_de-en": 4, "ted_trans_de-ja": 3}
    assert Counter(mixed.test["source"]) == {"wmt2019_de-en": 4, "ted_trans_de-ja": 1}  # TED's is carved off
    # Every chat answers in one language of its hub row and prompts in that language with the row's other text.
    pairs = [row["translation"] for corpus in ("wmt19", "ted_talks_iwslt") for row in HUB_ROWS[corpus]]
    for (_, user), (_, answer) in chats([*mixed.train, *mixed.test]):
        (texts,) = [t for t in pairs if answer in t.values()]
        (target,) = [language for language, text in texts.items() if text == answer]
        (source,) = set(texts) - {target}
        assert user in filled(target, texts[source])


def test_ted_talks_has_no_test_split_to_offer(hub):
    with pytest.raises(MissingSplitError, match=r"'ted_trans_nl-en' has no split 'test' \(ted_talks_iwslt ships "
                                                r"train\); set test_split_size"):
        mix_datasets({"ted_trans_nl-en": 1.0}, "sft", splits=["train", "test"])


@pytest.mark.parametrize("name, message", [
    ("wmt2019_xx-en", r"'wmt2019_xx-en': no translation prompts for language 'xx' \(Open-Assistant's prompts cover "
                      r"ar, de, en, fr, it, ja, ko, ms, nl, ru, tr, zh\)"),
    ("wmt2019_cs-en", r"'wmt2019_cs-en': no translation prompts for language 'cs'"),
    ("wmt2019_en-de", r"'wmt2019_en-de': wmt19 ships no 'en-de' pair; it ships 'de-en', which yields both directions: "
                      r"name it 'wmt2019_de-en' \(pairs with prompts for both languages: de-en, ru-en, zh-en, fr-de\)"),
    ("wmt2019_ja-en", r"'wmt2019_ja-en': wmt19 ships no 'ja-en' pair \(pairs with prompts"),
    ("ted_trans_de-xx", r"'ted_trans_de-xx': no translation prompts for language 'xx'"),
    ("ted_trans_ja-ja", r"'ted_trans_ja-ja': source and target are both 'ja'"),
    ("ted_trans_zh-tw-en", r"'ted_trans_zh-tw-en': expected 'ted_trans_<src>-<tgt>' with two language codes"),
    ("wmt2019_de", r"'wmt2019_de': expected 'wmt2019_<src>-<tgt>'"),
])
def test_unsupported_pairs_fail_before_anything_loads(hub, name, message):
    with pytest.raises(ValueError, match=message):
        mix_datasets({"wmt2019_de-en": 1.0, name: 1.0}, "sft", splits=["train"])
    assert hub == []  # the valid source before it was not loaded either
    with pytest.raises(ValueError, match=message):
        check_mixer({name: 1.0})


def test_other_names_are_not_translation_corpora(tmp_path, monkeypatch):
    assert translation_corpus("HuggingFaceH4/ultrachat_200k") is None
    assert translation_corpus("data/wmt2019_de-en.jsonl") is None
    monkeypatch.chdir(tmp_path)  # a local folder of that name is read as a folder
    write_jsonl(tmp_path / "wmt2019_de-en" / "train.jsonl", [{"translation": {"de": "Gut.", "en": "Good."}}])
    assert translation_corpus("wmt2019_de-en") is None
    assert mix_file("wmt2019_de-en")["source"] == ["wmt2019_de-en"]
