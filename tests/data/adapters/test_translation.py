"""chatalign.data.adapters.translation: Open-Assistant's WMT19 / TED Talks rows as prompted chats through the mixer, the
wmt2019_<pair> / ted_trans_<pair> names and their hub calls, and the errors for pairs the corpora cannot serve."""

import inspect
from collections import Counter

import datasets
import pytest
from helpers.rows import error_of, normalize, write_jsonl

from chatalign.data.adapters import translation
from chatalign.data.adapters.translation import TRANSLATION_PROMPTS, translation_corpus
from chatalign.data.mixer import check_mixer, mix_datasets
from chatalign.data.sources import MissingSplitError

SEED_LANGUAGES = {"ar", "de", "fr", "en", "it", "nl", "tr", "ru", "ms", "ko", "ja", "zh"}
HUB_ROWS = {"wmt/wmt19": [{"translation": {"de": f"Satz {i}.", "en": f"Sentence {i}."}} for i in range(4)],
            "IWSLT/ted_talks_iwslt": [{"translation": {"de": f"Rede {i}.", "ja": f"講演{i}。"}} for i in range(4)]}
# The hub as datasets>=4 can read it, written out here from the hub's listings rather than from the module: wmt/wmt19's
# README configs on main (Parquet, no script), and the folders of IWSLT/ted_talks_iwslt's Parquet export (revision
# refs/convert/parquet, a README-less branch: no named configs), its main branch holding only a loading script.
WMT19_CONFIGS = {"cs-en", "de-en", "fi-en", "gu-en", "kk-en", "lt-en", "ru-en", "zh-en", "fr-de"}
TED_EXPORT_FOLDERS = {f"{pair}_{year}" for pair in ("eu_ca", "nl_en", "nl_hi", "de_ja", "fr-ca_hi")
                      for year in ("2014", "2015", "2016")}
# load_dataset's own parameters: anything else (language_pair=, year=) goes to **config_kwargs, which a Parquet
# builder refuses ("BuilderConfig ParquetConfig(...) doesn't have a 'language_pair' key").
LOAD_DATASET_PARAMETERS = {name for name, parameter in inspect.signature(datasets.load_dataset).parameters.items()
                           if parameter.kind is not inspect.Parameter.VAR_KEYWORD}


def check_hub_call(path, name=None, **kwargs):
    """Fail a load_dataset call that datasets 5.2 could not serve from the hub as it is laid out today."""
    assert set(kwargs) <= LOAD_DATASET_PARAMETERS - {"path", "name"}, f"script-only kwargs: {sorted(kwargs)}"
    assert "split" in kwargs
    if path == "wmt/wmt19":
        assert name in WMT19_CONFIGS and set(kwargs) == {"split"}, (name, kwargs)
    else:
        assert path == "IWSLT/ted_talks_iwslt", path
        # main has only ted_talks_iwslt.py ("Dataset scripts are no longer supported"); the export has no named
        # configs, only "default" mixing every folder, so a pair is its folder, read as data_dir.
        assert name is None and set(kwargs) == {"split", "revision", "data_dir"}, (name, kwargs)
        assert kwargs["revision"] == "refs/convert/parquet" and kwargs["data_dir"] in TED_EXPORT_FOLDERS, kwargs


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
        check_hub_call(path, *args, **kwargs)
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
    ted = {"revision": "refs/convert/parquet", "data_dir": "de_ja_2016", "split": "train[:100001]"}
    assert hub == [
        ("wmt/wmt19", ("de-en",), {"split": "train[:100001]"}),
        ("wmt/wmt19", ("de-en",), {"split": "validation[:100001]"}),  # wmt19's validation split is the test split
        ("IWSLT/ted_talks_iwslt", (), ted),
    ]
    assert Counter(mixed.train["source"]) == {"wmt2019_de-en": 4, "ted_trans_de-ja": 3}
    assert Counter(mixed.test["source"]) == {"wmt2019_de-en": 4, "ted_trans_de-ja": 1}  # TED's is carved off
    # Every chat answers in one language of its hub row and prompts in that language with the row's other text.
    pairs = [row["translation"] for rows in HUB_ROWS.values() for row in rows]
    for (_, user), (_, answer) in chats([*mixed.train, *mixed.test]):
        (texts,) = [t for t in pairs if answer in t.values()]
        (target,) = [language for language, text in texts.items() if text == answer]
        (source,) = set(texts) - {target}
        assert user in filled(target, texts[source])


def test_ted_talks_has_no_test_split_to_offer(hub):
    with pytest.raises(MissingSplitError, match=r"'ted_trans_nl-en' has no split 'test' \(IWSLT/ted_talks_iwslt "
                                                r"ships train\); set test_split_size"):
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
    # The script built any pair; the Parquet export datasets>=4 reads holds its prebuilt configs only.
    ("ted_trans_de-en", r"'ted_trans_de-en': IWSLT/ted_talks_iwslt has no 'de-en' pair for 2016 \(datasets>=4 cannot "
                        r"run its loading script, which built any pair; its Parquet export holds only the prebuilt "
                        r"configs, with prompts for both languages: nl-en, de-ja, either order\)"),
    ("ted_trans_zh-en", r"'ted_trans_zh-en': IWSLT/ted_talks_iwslt has no 'zh-en' pair"),
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


def test_the_hub_check_refuses_what_datasets_cannot_serve():
    ok = {"revision": "refs/convert/parquet", "data_dir": "nl_en_2016", "split": "train"}
    check_hub_call("IWSLT/ted_talks_iwslt", **ok)
    check_hub_call("wmt/wmt19", "fr-de", split="train")
    for path, args, kwargs in [
        ("IWSLT/ted_talks_iwslt", (), {"language_pair": ["de", "ja"], "year": "2016", "split": "train"}),  # the seed's
        ("IWSLT/ted_talks_iwslt", ("de_ja_2016",), {"revision": "refs/convert/parquet", "split": "train"}),
        ("IWSLT/ted_talks_iwslt", (), {**ok, "revision": "main"}),  # main: the loading script
        ("IWSLT/ted_talks_iwslt", (), {**ok, "data_dir": "de_en_2016"}),
        ("wmt/wmt19", ("en-de",), {"split": "train"}),
        ("wmt19", ("de-en",), {"split": "train"}),
    ]:
        with pytest.raises(AssertionError):
            check_hub_call(path, *args, **kwargs)


@pytest.mark.parametrize("name, folder", [("ted_trans_de-ja", "de_ja_2016"), ("ted_trans_ja-de", "de_ja_2016"),
                                          ("ted_trans_nl-en", "nl_en_2016"), ("ted_trans_en-nl", "nl_en_2016")])
def test_a_ted_pair_in_either_order_reads_its_export_folder(hub, name, folder):
    # Open-Assistant's script took language_pair in either order; the export names each pair one way.
    mix_datasets({name: 1.0}, "sft", splits=["train"], shuffle=False)
    assert [kwargs["data_dir"] for _, _, kwargs in hub] == [folder]


def write_parquet(path, pair, texts):
    features = datasets.Features({"translation": datasets.Translation(languages=list(pair))})
    rows = [{"translation": dict(zip(pair, text, strict=True))} for text in texts]
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))


def test_local_copies_laid_out_like_the_hub_load_through_the_real_load_dataset(tmp_path, monkeypatch):
    # TED's Parquet export: one folder per prebuilt config, train/0000.parquet in each, no README.
    ted = tmp_path / "ted_talks_iwslt"
    for folder, pair in [("de_ja_2014", ("de", "ja")), ("de_ja_2016", ("de", "ja")), ("nl_en_2016", ("nl", "en"))]:
        write_parquet(ted / folder / "train" / "0000.parquet", pair,
                      [(f"{folder} {pair[0]} {i}", f"{folder} {pair[1]} {i}") for i in range(3)])
    # wmt/wmt19's main: Parquet per config, named in the README's configs.
    wmt = tmp_path / "wmt19"
    for split, count in (("train", 4), ("validation", 2)):
        write_parquet(wmt / "de-en" / f"{split}-00000-of-00001.parquet", ("de", "en"),
                      [(f"{split} de {i}", f"{split} en {i}") for i in range(count)])
        write_parquet(wmt / "fr-de" / f"{split}-00000-of-00001.parquet", ("fr", "de"), [("fr", "de")])
    (wmt / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {pair}\n  data_files:\n  - split: train\n    path: {pair}/train-*\n"
        f"  - split: validation\n    path: {pair}/validation-*\n" for pair in ("de-en", "fr-de")) + "---\n")
    monkeypatch.setattr(translation, "TED_HUB_ID", str(ted))
    monkeypatch.setattr(translation, "WMT19_HUB_ID", str(wmt))

    # What the old call would meet there: no config per folder, and config kwargs refused by the Parquet builder.
    with pytest.raises(ValueError, match=r"BuilderConfig 'de_ja_2016' not found. Available: \['default'\]"):
        datasets.load_dataset(str(ted), "de_ja_2016", split="train")
    with pytest.raises(ValueError, match="doesn't have a 'language_pair' key"):
        datasets.load_dataset(str(ted), language_pair=["de", "ja"], year="2016", split="train")

    mixed = mix_datasets({"ted_trans_ja-de": 1.0, "wmt2019_de-en": 1.0}, "sft", splits=["train", "test"],
                         test_split_size=1, shuffle=False)
    assert Counter(mixed.train["source"]) == {"ted_trans_ja-de": 2, "wmt2019_de-en": 4}
    assert Counter(mixed.test["source"]) == {"ted_trans_ja-de": 1, "wmt2019_de-en": 2}  # wmt19's validation split
    answers = Counter(answer.rsplit(" ", 1)[0] for chat in chats([*mixed.train, *mixed.test]) for _, answer in chat[1:])
    ted_answers = answers["de_ja_2016 de"] + answers["de_ja_2016 ja"]
    assert ted_answers == 3 and answers["train de"] + answers["train en"] == 4  # only the 2016 de-ja folder
    assert answers["validation de"] + answers["validation en"] == 2 and sum(answers.values()) == 9
