"""chatalign.store: the resumable keyed JSONL, atomic writes, the content ids and seeded RNGs."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from chatalign.store import (
    ResumableJsonl,
    atomic_path,
    canonical_json,
    judgment_key,
    pair_id,
    prompt_id,
    seeded_rng,
    write_jsonl,
)

USER = {"role": "user", "content": "How do I boil an egg?"}
SYSTEM = {"role": "system", "content": "Be brief."}


def test_resumable_jsonl_recovers_from_a_torn_last_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": 1, "x": 1}\n{"id": 2, "x"')  # killed mid-write
    store = ResumableJsonl(path)
    assert 1 in store and 2 not in store
    store.add({"id": 2, "x": 2})
    store.add({"id": 3, "x": 3})
    again = ResumableJsonl(path)
    assert [again.get(i)["x"] for i in (1, 2, 3)] == [1, 2, 3]
    # a whole row written by hand without its final newline is kept
    path.write_text('{"id": 7, "x": 7}')
    ResumableJsonl(path).add({"id": 8, "x": 8})
    assert len(ResumableJsonl(path)) == 2


def test_prompt_id_of_a_lone_user_message_is_the_sha256_of_its_text_as_ultrachat_computes_it():
    # HuggingFaceH4/ultrachat_200k and ultrafeedback_binarized: prompt_id = sha256(prompt.encode("utf-8")).hexdigest()
    assert prompt_id([USER]) == hashlib.sha256(USER["content"].encode("utf-8")).hexdigest()
    assert prompt_id([{"role": "user", "content": "café"}]) == hashlib.sha256("café".encode()).hexdigest()


def test_prompt_id_of_other_prompts_hashes_their_messages_only():
    with_system = prompt_id([SYSTEM, USER])
    assert with_system != prompt_id([USER])  # a system message changes the prompt
    expected = hashlib.sha256(canonical_json([SYSTEM, USER]).encode()).hexdigest()
    assert with_system == expected
    # keys other than role and content (Arrow's union of columns, tool_calls=None) do not change the id
    assert prompt_id([{**SYSTEM, "name": None}, {**USER, "tool_calls": None}]) == with_system


def test_pair_id_takes_texts_or_messages_and_depends_on_the_order():
    chosen, rejected = [{"role": "assistant", "content": "Boil it."}], [{"role": "assistant", "content": "Fry it."}]
    key = pair_id([USER], chosen, rejected)
    assert key == pair_id([USER], "Boil it.", "Fry it.")
    assert key == pair_id([{**USER, "tool_calls": None}], chosen, rejected)
    assert key != pair_id([USER], rejected, chosen)
    canonical = canonical_json({"prompt": [USER], "chosen": chosen, "rejected": rejected})
    assert key == hashlib.sha256(canonical.encode()).hexdigest()
    assert canonical == ('{"chosen":[{"content":"Boil it.","role":"assistant"}],"prompt":[{"content":"How do I boil '
                         'an egg?","role":"user"}],"rejected":[{"content":"Fry it.","role":"assistant"}]}')


def test_judgment_key_changes_with_every_part():
    base = judgment_key("llm:gpt-4o", "score", [USER], "Boil it.")
    assert base == judgment_key("llm:gpt-4o", "score", [{**USER, "name": None}], "Boil it.")
    others = {judgment_key("llm:gpt-4o-mini", "score", [USER], "Boil it."),
              judgment_key("llm:gpt-4o", "compare", [USER], "Boil it."),
              judgment_key("llm:gpt-4o", "score", [SYSTEM, USER], "Boil it."),
              judgment_key("llm:gpt-4o", "score", [USER], "Fry it."),
              judgment_key("llm:gpt-4o", "compare", [USER], "Boil it.", "Fry it."),
              judgment_key("llm:gpt-4o", "compare", [USER], "Fry it.", "Boil it.")}
    assert base not in others and len(others) == 6


def test_atomic_path_replaces_whole_or_leaves_the_old_file(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    write_jsonl(path, [{"id": 1}, {"id": 2}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"id": 1}, {"id": 2}]
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            assert tmp.name.startswith(".") and tmp.parent == path.parent  # hidden: never read as data
            tmp.write_text("half a fi")
            raise RuntimeError("killed")
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["rows.jsonl"]  # no temporary file left behind


def test_seeded_rng_depends_only_on_seed_and_keys():
    draw = seeded_rng(42, "train", "source-a", 3).permutation(10)
    assert np.array_equal(draw, seeded_rng(42, "train", "source-a", 3).permutation(10))
    assert not np.array_equal(draw, seeded_rng(42, "train", "source-a", 4).permutation(10))
    assert not np.array_equal(draw, seeded_rng(43, "train", "source-a", 3).permutation(10))


def test_the_pipelines_key_their_rows_with_the_store_ids():
    """One id scheme: self-play prompts, preference-pair prompts and DPO's reference log-probs use the store's ids."""
    from datasets import Dataset

    from chatalign.synth.selfplay import conversations_to_prompts
    from chatalign.train.dpo.reference import pair_keys

    reply = {"role": "assistant", "content": "Boil it."}
    rows = conversations_to_prompts([{"messages": [USER, reply]}, {"messages": [SYSTEM, USER, reply]}])
    assert [r["prompt_id"] for r in rows] == [prompt_id([USER]), prompt_id([SYSTEM, USER])]
    pairs = Dataset.from_list([{"prompt": [USER], "chosen": [reply], "rejected": [{**reply, "content": "Fry it."}]}])
    assert pair_keys(pairs) == [pair_id([USER], "Boil it.", "Fry it.")]


def test_read_jsonl_splits_at_newlines_only_and_names_a_bad_line(tmp_path):
    from chatalign.store import read_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": "a\u2028b\u0085c"}, ensure_ascii=False) + "\n\n" + json.dumps({"n": 2}) + "\n")
    assert read_jsonl(path) == [{"text": "a\u2028b\u0085c"}, {"n": 2}]
    path.write_text('{"n": 1}\n{"n": \n')
    with pytest.raises(ValueError, match=r"rows\.jsonl line 2 is not valid JSON"):
        read_jsonl(path)
