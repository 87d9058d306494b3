"""Open-Assistant's translation corpora as sft chats: the WMT19 and TED Talks (IWSLT) names of its ``get_one_dataset``
(``wmt2019_<src>-<tgt>``, ``ted_trans_<src>-<tgt>``), their hub loading, and the ``translation`` row format.

Open-Assistant loads both through the hub's loading scripts, which datasets>=4 no longer runs ("Dataset scripts are
no longer supported"); its Parquet builders also refuse the TED script's ``language_pair=``/``year=`` kwargs. So
``wmt2019_`` reads ``wmt/wmt19``, converted to Parquet on its main branch, by config name, and ``ted_trans_`` reads the
Parquet export of ``IWSLT/ted_talks_iwslt``, which only holds the script's prebuilt configs: two pairs with prompts.

A row of either corpus is ``{"translation": {"de": "...", "en": "..."}}`` (the hub's ``Translation`` feature). It
becomes one user turn, a prompt template of the target language filled with the source text, and one assistant turn,
the target text. As in Open-Assistant (``custom_datasets/translation.py``) each row goes one way or the other and gets
one of its target language's templates; here both choices are a function of the row's content (its sha256), not of
``random``, so every run, rank and process builds the same chats and a pair's key order does not matter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets

from chatalign.data.registry import register_adapter
from chatalign.data.schemas import InvalidRow, check_content, type_name
from chatalign.data.sources import MissingSplitError, split_base
from chatalign.store import content_hash

# Open-Assistant's TRANSLATION_PROMPT for the languages its model_training README lists as supported (ar, de, fr, en,
# it, nl, tr, ru, ms, ko, ja, zh), verbatim: "{}" is the text to translate. Its vi, es, hi, uk and zh-tw lists are
# not documented as supported (the hi list mixes in Bengali prompts), so they are left out.
TRANSLATION_PROMPTS: dict[str, tuple[str, ...]] = {
    "zh": (
        "Translate to chinese simplified: {}",
        "{}, translate to chinese",
        "{} give me the chinese translation",
        "翻译成中文: {}",
        "{} 这句中文翻译怎麽写？",
        "我需要这句话的中文翻译: {}",
    ),
    "ja": (
        "{}: help me translate to japanese",
        "Need japanese translation: {}",
        "{}: にほんごやくをよこす",
        "{}: にほんごやくをおくれ",
        "{}: にほんごやくを じょす",
        "give me the japanese translation, {}",
    ),
    "de": (
        "{}: translate to german",
        "give me the german translation {}",
        "I want german translation {}",
        "{}, ins Deutsche übersetzen",
        "{}, Übersetzen ins Deutsche",
    ),
    "fr": (
        "{}. translate to french",
        "{} write in french",
        "{} french translation",
        "{} ,donnez moi la traduction française",
    ),
    "ko": (
        "{}. translate to Korean",
        "how do we write in korean: {}",
        "give me the korean translation: {}",
        "{}, 한국어 번역을 해주세요",
    ),
    "ms": (
        "{} translate to malay",
        "{} how do we write in Malay",
        "{} give me the malay translation",
        "{} , berikan saya terjemahan dalam bahasa melayu",
        "{}, Jemahan di bahasa melayu",
        "{}, jemahkan ayat ini kepada bahasa melayu",
    ),
    "en": (
        "{}. translate to english",
        "{} write in english",
        "english translation: '{}'",
    ),
    "ru": (
        "помогите мне перевести это на русский : {}",
        "{} перевести на русский язык",
        "russian translation: '{}'",
    ),
    "tr": (
        "{}. türkçeye çevi̇ri̇n",
        "{} write in turkish",
        "turkish translation: '{}'",
        "türkçeye çevi̇rmek: {}",
    ),
    "it": (
        "{}. translate to italian",
        "{} write in italian",
        "italian translation: '{}'",
    ),
    "nl": (
        "{}. translate to dutch",
        "{} write in dutch",
        "dutch translation: '{}'",
    ),
    "ar": (
        "{}. translate to arabic",
        "{} write in arabic",
        "arabic translation: '{}'",
    ),
}

# The hub's wmt19 configs (its _LANGUAGE_PAIRS): each pair ships in one order only. wmt/wmt19 (where the canonical
# "wmt19" moved) was converted to Parquet on main and its loading script deleted: its README lists these configs (data
# files <pair>/train-*, <pair>/validation-*), so load_dataset(WMT19_HUB_ID, "de-en") works under datasets>=4.
WMT19_HUB_ID = "wmt/wmt19"
WMT19_PAIRS = ("cs-en", "de-en", "fi-en", "gu-en", "kk-en", "lt-en", "ru-en", "zh-en", "fr-de")
# IWSLT/ted_talks_iwslt's main branch still holds only its loading script (ted_talks_iwslt.py; a Parquet conversion,
# its PR #4, was never merged), which built any two of 109 languages from language_pair= and year=: datasets>=4 can
# load none of that. What it can load is the hub's Parquet export (revision refs/convert/parquet): one folder per
# config the script prebuilt, "{lang1}_{lang2}_{year}" for its _LANGUAGE_PAIRS x 2014, 2015, 2016, each holding
# train/0000.parquet of {"translation": {lang1: ..., lang2: ...}}. That branch has no README, so its folders are no
# configs to datasets (only "default", every folder mixed): a pair's folder is read as data_dir. The seed reads 2016's
# release, whose only split is train (de_ja_2016: 3,590 rows, nl_en_2016: 3,852, per the script's dataset_infos). Of
# the pairs with prompts for both languages only de-ja and nl-en are there. Read from the hub's file listings (the root
# of that branch: the 15 folders and .gitattributes), not loaded from the hub: unverified against a live download.
TED_HUB_ID = "IWSLT/ted_talks_iwslt"
TED_REVISION = "refs/convert/parquet"
TED_PAIRS = (("eu", "ca"), ("nl", "en"), ("nl", "hi"), ("de", "ja"), ("fr-ca", "hi"))
TED_YEARS = ("2014", "2015", "2016")
TED_CONFIGS = tuple(f"{first}_{second}_{year}" for first, second in TED_PAIRS for year in TED_YEARS)
TED_YEAR = "2016"
# The seed stops reading a corpus once it holds more than maximum_size=100000 pairs: its first 100,001 rows.
SEED_MAXIMUM_ROWS = 100_001

CORPORA = {"wmt2019": WMT19_HUB_ID, "ted_trans": TED_HUB_ID}  # mixer-name prefix -> hub dataset
_NAME = re.compile(r"(wmt2019|ted_trans)_(.*)")


def _ted_config(source: str, target: str) -> str | None:
    """The TED export's folder holding a pair in either order (its Translation struct sorts the languages, and a
    row's direction follows its texts, so which order the folder names them in changes nothing), None if absent."""
    for first, second in ((source, target), (target, source)):
        if (config := f"{first}_{second}_{TED_YEAR}") in TED_CONFIGS:
            return config
    return None


@dataclass(frozen=True)
class TranslationCorpus:
    """A mixer entry naming one of Open-Assistant's translation corpora and a language pair it ships."""

    name: str  # the mixer entry, e.g. "wmt2019_de-en"
    corpus: str  # "wmt2019" or "ted_trans"
    source: str
    target: str

    @property
    def hub_id(self) -> str:
        return CORPORA[self.corpus]

    def hub_split(self, split: str) -> str | None:
        """The corpus's split serving a requested one: wmt19's validation split is its test split, as the seed's
        eval set; TED Talks has only train (None: no such split)."""
        base = split_base(split)
        if base == "train":
            return "train"
        if self.corpus == "wmt2019" and base in ("test", "validation"):
            return "validation"
        return None

    @property
    def hub_config(self) -> str:
        """The hub config serving the pair: wmt19's "de-en", the TED export's "de_ja_2016" folder."""
        if self.corpus == "wmt2019":
            return f"{self.source}-{self.target}"
        config = _ted_config(self.source, self.target)
        if config is None:  # translation_corpus makes corpora of shipped pairs only
            raise ValueError(f"dataset '{self.name}': {TED_HUB_ID} has no {self.source}-{self.target} folder")
        return config

    def load(self, split: str) -> datasets.Dataset:
        """The split's first SEED_MAXIMUM_ROWS rows from the hub: the Parquet data of what Open-Assistant loads through
        loading scripts, which datasets>=4 no longer runs."""
        hub_split = self.hub_split(split)
        if hub_split is None:
            shipped = "train, validation (served as test)" if self.corpus == "wmt2019" else "train"
            raise MissingSplitError(f"dataset '{self.name}' has no split '{split}' ({self.hub_id} ships {shipped})")
        sliced = f"{hub_split}[:{SEED_MAXIMUM_ROWS}]"
        if self.corpus == "wmt2019":
            return datasets.load_dataset(WMT19_HUB_ID, self.hub_config, split=sliced)
        return datasets.load_dataset(TED_HUB_ID, revision=TED_REVISION, data_dir=self.hub_config, split=sliced)


def translation_corpus(name: str) -> TranslationCorpus | None:
    """The corpus a mixer entry names (``wmt2019_de-en``, ``ted_trans_de-ja``), None for any other entry (or for an
    existing local path of that name, which is read as a file).

    An unsupported language or a pair the corpus does not ship is a ValueError naming the entry, raised before
    anything is loaded. A pair yields both directions, so ``wmt2019_en-de`` is an error pointing to ``wmt2019_de-en``;
    TED, whose script took a pair in either order, serves ``ted_trans_ja-de`` from its de_ja folder as the seed did.
    """
    match = _NAME.fullmatch(name)
    if match is None or Path(name).expanduser().exists():
        return None
    corpus, pair = match.groups()
    languages = pair.split("-")
    example = "de-en" if corpus == "wmt2019" else "de-ja"
    if len(languages) != 2 or not all(languages):
        raise ValueError(f"dataset '{name}': expected '{corpus}_<src>-<tgt>' with two language codes "
                         f"(e.g. '{corpus}_{example}'), got pair '{pair}'")
    source, target = languages
    for language in languages:
        if language not in TRANSLATION_PROMPTS:
            raise ValueError(f"dataset '{name}': no translation prompts for language '{language}' (Open-Assistant's "
                             f"prompts cover {', '.join(sorted(TRANSLATION_PROMPTS))})")
    if source == target:
        raise ValueError(f"dataset '{name}': source and target are both '{source}'")
    if corpus == "wmt2019" and pair not in WMT19_PAIRS:
        usable = [p for p in WMT19_PAIRS if all(lang in TRANSLATION_PROMPTS for lang in p.split("-"))]
        reverse = f"{target}-{source}"
        hint = (f"; it ships '{reverse}', which yields both directions: name it 'wmt2019_{reverse}'"
                if reverse in WMT19_PAIRS else "")
        raise ValueError(f"dataset '{name}': wmt19 ships no '{pair}' pair{hint} (pairs with prompts for both "
                         f"languages: {', '.join(usable)})")
    if corpus == "ted_trans" and _ted_config(source, target) is None:
        usable = [f"{first}-{second}" for first, second in TED_PAIRS
                  if first in TRANSLATION_PROMPTS and second in TRANSLATION_PROMPTS]
        raise ValueError(f"dataset '{name}': {TED_HUB_ID} has no '{pair}' pair for {TED_YEAR} (datasets>=4 cannot run "
                         f"its loading script, which built any pair; its Parquet export holds only the prebuilt "
                         f"configs, with prompts for both languages: {', '.join(usable)}, either order)")
    return TranslationCorpus(name, corpus, source, target)


def translation_messages(texts: Mapping) -> list[dict]:
    """One translation row's ``{lang: text, lang2: text2}`` -> [user: a target-language prompt filled with the source
    text, assistant: the target text]. Which way the row goes and which template it gets follow the sha256 of its
    texts. Languages whose text is None are absent (a file mixing pairs reads back with every pair's columns)."""
    if not isinstance(texts, Mapping):
        raise InvalidRow("translation", "bad type", f"expected a mapping of language -> text, got {type_name(texts)}")
    present = {language: text for language, text in texts.items() if text is not None}
    if len(present) != 2:
        reason = "missing value" if len(present) < 2 else "bad type"
        raise InvalidRow("translation", reason, f"expected texts in exactly two languages, got "
                                                f"{', '.join(sorted(present)) or 'none'}")
    for language, text in present.items():
        field = f"translation.{language}"
        problem = check_content(text, field)
        if problem is not None:
            raise InvalidRow(problem.field, problem.reason, problem.detail)
        if language not in TRANSLATION_PROMPTS:
            raise InvalidRow(field, "bad type", f"no translation prompts for language '{language}' (Open-Assistant's "
                                                f"prompts cover {', '.join(sorted(TRANSLATION_PROMPTS))})")
    draw = int(content_hash(present), 16)
    first, second = sorted(present)
    source, target = (first, second) if draw % 2 == 0 else (second, first)
    templates = TRANSLATION_PROMPTS[target]
    prompt = templates[(draw // 2) % len(templates)].format(present[source])
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": present[target]}]


@register_adapter("translation", schema="sft", required=("translation",), detect=[{"translation"}], priority=100)
def _translation_to_sft(row: Mapping) -> dict:
    """WMT19 / TED Talks rows ({translation: {lang: text, lang2: text}}) -> one prompted translation turn."""
    return {"messages": translation_messages(row["translation"])}
