"""chatalign.eval.browser and scripts/browse_results.py: the index over result files, and the page itself in real
headless Chromium (Debian's chromium and chromedriver): load it, pick a question, check what it shows, screenshot."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from conftest import load_script

from chatalign.eval import arena_hard
from chatalign.eval.browser import ResultsIndex, render_pair, render_view


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def mt_bench_results(folder):
    """Two models' answers to questions 81 and 82, single judgments by judge J with recognisable reasoning, and one
    pairwise game."""
    for model in ("alpha", "beta"):
        write_jsonl(folder / "model_answer" / f"{model}.jsonl",
                    [{"question_id": q, "model_id": model, "choices": [{"index": 0, "turns": [
                        f"{model} answers {q} turn 1", f"{model} answers {q} turn 2"]}]} for q in (81, 82)])
    write_jsonl(folder / "model_judgment" / "J_single.jsonl",
                [{"question_id": q, "model": m, "judge": ["J", "single-v1"], "turn": t, "score": s,
                  "judgment": f"REASONING-{q}-{m}-{t} Rating: [[{s}]]"}
                 for q in (81, 82) for m, s in (("alpha", 7), ("beta", 4)) for t in (1, 2)])
    write_jsonl(folder / "model_judgment" / "J_pair.jsonl",
                [{"question_id": 82, "model_1": "alpha", "model_2": "beta", "g1_winner": "model_1",
                  "g2_winner": "model_1", "judge": ["J", "pair-v2"], "turn": 1, "g1_judgment": "GAME-ONE [[A]]",
                  "g2_judgment": "GAME-TWO [[B]]"}])
    return folder


def test_the_index_shows_answers_judgments_and_pairs(tmp_path):
    index = ResultsIndex(mt_bench_dirs=[mt_bench_results(tmp_path / "mt")])
    assert index.benchmarks() == ["mt_bench"] and index.judges("mt_bench") == ["J"]
    assert [qid for _, qid in index.questions("mt_bench")] == ["81", "82"]
    assert index.models("mt_bench") == ["alpha", "beta"]
    view = index.view("mt_bench", "J", "82")
    assert view["answers"]["beta"] == ["beta answers 82 turn 1", "beta answers 82 turn 2"]
    text = render_view(view)
    assert "REASONING-82-alpha-2" in text and "score 4" in text and "GAME-ONE" in text
    assert "REASONING-81" not in text  # only the chosen question
    pair = render_pair(index.pair_view("mt_bench", "J", "82", "alpha", "beta"))
    assert "| score, turn 1 | 7 | 4 |" in pair and "model_1 / model_1" in pair


def test_arena_hard_and_alpaca_eval_results(tmp_path):
    qid = arena_hard.load_questions(arena_hard.V01)[0]["id"]
    root = tmp_path / "ah"
    write_jsonl(root / arena_hard.V01 / "model_answer" / "mine.jsonl",
                [{"question_id": qid, "model_id": "mine", "choices": [{"index": 0, "turns": [{"content": "MY ANSWER"}]}]}])
    write_jsonl(root / arena_hard.V01 / "model_judgment" / "J" / "mine.jsonl",
                [{"question_id": qid, "model": "mine", "judge": "J",
                  "games": [{"score": "A>B", "judgment": "FIRST GAME"}, {"score": "A=B", "judgment": "SECOND"}]}])
    alpaca = tmp_path / "ae" / "mine" / "ann"
    alpaca.mkdir(parents=True)
    (alpaca / "annotations.json").write_text(json.dumps([{
        "instruction": "Say hi.", "output_1": "hello", "generator_1": "base", "output_2": "hi!", "generator_2": "mine",
        "annotator": "ann", "preference": 1.75, "dataset": "demo"}]))
    index = ResultsIndex(arena_hard_dirs=[root], alpaca_eval_dirs=[tmp_path / "ae"])
    assert index.benchmarks() == ["alpaca_eval", arena_hard.V01]
    view = index.view(arena_hard.V01, "J", str(qid))
    assert view["answers"]["mine"] == ["MY ANSWER"] and "gpt-4-0314" in view["answers"]  # the shipped baseline
    assert "A>B / A=B" in render_view(view) and "FIRST GAME" in render_view(view)
    (label, aid), = index.questions("alpaca_eval")
    assert "Say hi." in label
    assert "preference 1.75" in render_pair(index.pair_view("alpaca_eval", "ann", aid, "base", "mine"))
    with pytest.raises(ValueError, match="no results found"):
        ResultsIndex()


def chromium_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="Debian's chromium and chromium-driver are not installed (make install installs them)")
def test_the_page_in_headless_chromium(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from chatalign.generation.servers import free_port

    port = free_port()
    app = load_script("browse_results").main(["--mt_bench_dirs", str(mt_bench_results(tmp_path / "mt")),
                                              "--port", str(port)], block=False)
    driver = chromium_driver()
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "REASONING-81-alpha-1" in d.find_element(By.ID, "single").text)  # the first question
        driver.find_element(By.CSS_SELECTOR, "#question input").click()
        option = wait.until(ec.element_to_be_clickable((By.XPATH, "//li[contains(., '82 [writing]')]")))
        option.click()
        wait.until(lambda d: "REASONING-82-beta-2" in d.find_element(By.ID, "single").text)
        single = driver.find_element(By.ID, "single").text
        assert "beta answers 82 turn 1" in single and "REASONING-81" not in single
        driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Pairwise')]").click()
        wait.until(lambda d: "GAME-ONE" in d.find_element(By.ID, "pair").text)
        pair = driver.find_element(By.ID, "pair").text
        assert "alpha vs beta" in pair and "7" in pair and "4" in pair
        time.sleep(0.5)
        shot = tmp_path / "browser.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()
        app.close()
