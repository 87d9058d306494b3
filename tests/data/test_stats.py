"""chatalign.data.stats: the per-source count table of a mix."""


import logging

from helpers.rows import sft_rows, write_jsonl

from chatalign.data.mixer import mix_datasets
from chatalign.data.stats import MixStats, format_stats_table, log_stats


def table_line(table: str, source: str, split: str) -> list[str]:
    for line in table.splitlines():
        cells = line.split()
        if cells[:2] == [source, split]:
            return cells[2:]
    raise AssertionError(f"no line for {source} {split} in\n{table}")


def test_stats_table_reports_exact_counts(tmp_path, tiny_tokenizer):
    rows = sft_rows("A", 60)
    rows[4]["messages"][0]["role"] = "gpt"  # an even row: passes the filter, then is skipped as invalid
    write_jsonl(tmp_path / "A" / "train.jsonl", rows)
    write_jsonl(tmp_path / "A" / "test.jsonl", sft_rows("AT", 5, start=500))
    write_jsonl(tmp_path / "B" / "train.jsonl", sft_rows("B", 20, start=50))  # even p50..p58 duplicate A's ids
    write_jsonl(tmp_path / "B" / "test.jsonl", sft_rows("BT", 3, start=600))
    c = write_jsonl(tmp_path / "C.jsonl", sft_rows("C", 30, start=1000))  # no test split: 6 rows carved off
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    mixed = mix_datasets(
        {a: 0.5, b: {"size": 4}, c: 1},
        "sft",
        splits=["train", "test"],
        test_split_size=6,
        dataset_filter={"category": "even"},
        dedup_column="prompt_id",
        skip_invalid=True,
        tokenizer=tiny_tokenizer,
    )
    table = format_stats_table(mixed.stats)
    assert table.splitlines()[0].split() == [
        "source", "split", "available", "filtered", "skipped", "valid", "to_test", "dedup", "sampled", "final",
        "turns", "tok_mean", "tok_max",
    ]  # fmt: skip
    counts = {  # available, filtered, skipped, valid, to_test, dedup, sampled, final
        (a, "train"): ["60", "30", "1", "29", "0", "0", "14", "14"],  # floor(0.5 * 29)
        (b, "train"): ["20", "10", "0", "10", "0", "5", "4", "4"],
        (c, "train"): ["30", "15", "0", "15", "6", "0", "9", "9"],
        ("TOTAL", "train"): ["110", "55", "1", "54", "6", "5", "27", "27"],
        (a, "test"): ["5", "3", "0", "3", "0", "0", "3", "3"],  # test splits: filtered, never subsampled
        (b, "test"): ["3", "2", "0", "2", "0", "0", "2", "2"],
        (c, "test<-train"): ["6", "6", "0", "6", "0", "0", "6", "6"],
        ("TOTAL", "test"): ["14", "11", "0", "11", "0", "0", "11", "11"],
    }
    for (source, split), expected in counts.items():
        assert table_line(table, source, split)[:8] == expected, (source, split)
    assert len(mixed.train) == 27 and len(mixed.test) == 11
    assert f"  {a} [train] unknown role: 1" in table.splitlines()
    # token statistics: user + assistant contents of the final rows, tokenized without special tokens
    a_rows = [r for r in mixed.train if r["source"] == a]
    lengths = [
        len(tiny_tokenizer("\n".join(m["content"] for m in r["messages"]), add_special_tokens=False)["input_ids"])
        for r in a_rows
    ]
    assert table_line(table, a, "train")[8:] == ["2.0", f"{sum(lengths) / len(lengths):.1f}", str(max(lengths))]
    assert mixed.stats.get(a, "train").max_tokens == max(lengths)


def test_stats_table_lists_skip_reasons_and_logs(tmp_path, caplog):
    rows = sft_rows("A", 10)
    rows[3]["messages"][0]["role"] = "gpt"
    rows[4]["messages"][0]["role"] = "gpt"
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    mixed = mix_datasets({path: 1}, "sft", splits=["train"], skip_invalid=True)
    table = format_stats_table(mixed.stats)
    assert table_line(table, path, "train") == ["10", "10", "2", "8", "0", "0", "8", "8"]
    assert f"  {path} [train] unknown role: 2" in table.splitlines()
    logger = logging.getLogger("test_data_stats")
    with caplog.at_level(logging.INFO, logger="test_data_stats"):
        log_stats(mixed.stats, logger)
    assert "unknown role: 2" in caplog.text
    assert format_stats_table(MixStats()).splitlines()[0].startswith("source")
