"""chatalign.data.registry: format detection errors and custom adapters."""



import pytest
from helpers.rows import A, U, error_of, normalize

from chatalign.data.registry import detect_format, get_adapter, list_adapters, register_adapter, unregister_adapter


def test_detect_format_error_lists_known_formats():
    with pytest.raises(ValueError) as info:
        detect_format(["conversations", "chosen", "rejected"], schema="sft")
    assert str(info.value).startswith(
        "cannot detect the dataset format as 'sft' rows from columns [conversations, chosen, rejected]; known formats: "
    )
    with pytest.raises(ValueError) as info:
        detect_format(["foo"])
    message = str(info.value)
    for name in ("ultrafeedback", "llama_factory_kto", "tora_gsm8k", "alpaca", "sharegpt", "sft", "prompt"):
        assert f"{name} [" in message
    assert "or name a format explicitly (one of oasst, " in message and "llama_factory_alpaca" in message


def test_register_custom_adapter():
    @register_adapter("qa_pairs", schema="sft", required=("q", "a"), detect=[{"q", "a"}], priority=1)
    def qa(row):
        """Question/answer columns -> sft."""
        return {"messages": [U(row["q"]), A(row["a"])]}

    try:
        assert "qa_pairs" in list_adapters("sft") and "qa_pairs" not in list_adapters("preference")
        assert get_adapter("qa_pairs").description == "Question/answer columns -> sft."
        out, _ = normalize([{"q": "2+2?", "a": "4", "extra": 1}], "sft")
        assert out.to_list() == [{"messages": [U("2+2?"), A("4")]}]
        with pytest.raises(ValueError, match="adapter 'qa_pairs' is already registered"):
            register_adapter("qa_pairs", schema="sft")(qa)
        error = error_of([{"q": "2+2?", "a": ""}], "sft", name="qa.csv")
        assert str(error) == (
            "dataset 'qa.csv' row 0, field 'messages[1].content': content is empty (after converting with format "
            "'qa_pairs')"
        )
    finally:
        unregister_adapter("qa_pairs")
    assert "qa_pairs" not in list_adapters()
    with pytest.raises(ValueError, match="unknown dataset format 'qa_pairs'"):
        get_adapter("qa_pairs")
