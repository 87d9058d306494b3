"""chatalign.judges.loading: judge specs."""

from __future__ import annotations

import pytest

from chatalign.judges.loading import DEFAULT_OPENAI_URL, JudgeSpec, load_judge, parse_judge_spec, resolve_llm_target


def test_judge_specs(tmp_path):
    assert parse_judge_spec("reward_model:/m/rm") == JudgeSpec("reward_model", "/m/rm")
    assert parse_judge_spec("rm:/m/rm").kind == "reward_model"
    assert parse_judge_spec("pairrm:/m/p") == JudgeSpec("pairrm", "/m/p")
    assert parse_judge_spec("llm:gpt-4o@https://api.example.com/v1").target == "gpt-4o@https://api.example.com/v1"
    assert parse_judge_spec("gpt-4o", default_kind="llm") == JudgeSpec("llm", "gpt-4o")
    with pytest.raises(ValueError, match="expected reward_model:<path>, pairrm:<path> or llm:"):
        parse_judge_spec("gpt-4o")
    with pytest.raises(ValueError, match="empty"):
        parse_judge_spec("")
    assert resolve_llm_target(str(tmp_path)) == ("local", str(tmp_path.resolve()), None)
    assert resolve_llm_target("http://127.0.0.1:8000/v1") == ("http", "http://127.0.0.1:8000/v1", None)
    assert resolve_llm_target("qwen@http://h:1/v1") == ("http", "http://h:1/v1", "qwen")
    assert resolve_llm_target("gpt-4o") == ("http", DEFAULT_OPENAI_URL, "gpt-4o")
    assert resolve_llm_target("gpt-4o", "http://h:2/v1") == ("http", "http://h:2/v1", "gpt-4o")
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        load_judge(f"reward_model:{tmp_path / 'missing'}")
