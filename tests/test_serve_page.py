"""The page of `transformer-mt serve` (transformer_mt/serve/static/) in a real headless browser.

Debian's chromium with its chromium-driver, driven by Selenium, against a real server process:
type a sentence, press Translate, the translation appears, and the heat map has one row per
target piece and one column per source piece (the final "</s>" counted on both sides). A
screenshot is saved in the test's tmp folder; set SERVE_PAGE_SCREENSHOT=PATH to keep a copy.
`.ci/run` installs the browser; elsewhere the test skips, saying why.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_SENTENCES, write_random_checkpoint

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update "
    "--disable-sync --no-first-run --window-size=1280,1000"
).split()

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "no headless browser: apt-get install -y chromium chromium-driver (.ci/run does)", allow_module_level=True
    )
pytest.importorskip("starlette", reason="the serve extra is not installed: pip install 'transformer-mt[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra)")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from tests.test_serve import start_server  # noqa: E402
from transformer_mt.data.vocab import Vocabulary  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = write_random_checkpoint(tmp_path_factory.mktemp("page") / "checkpoint.pt")
    process, url = start_server(checkpoint, "server.access_log=false")
    yield url, Vocabulary.from_file(checkpoint.parent / "spm.model")
    process.terminate()
    process.wait(timeout=60)


@pytest.fixture()
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_type_translate_and_see_the_attention_heat_map(server, browser, tmp_path):
    url, vocab = server
    sentence = SAMPLE_SENTENCES[0]
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda b: "parameters" in b.find_element(By.ID, "model-info").text)
    browser.find_element(By.ID, "source").send_keys(sentence)
    browser.find_element(By.ID, "translate").click()

    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#heatmap tbody tr"))
    translation = browser.find_element(By.CSS_SELECTOR, ".result .translation").text
    assert translation.strip(), "no translation appeared"
    assert browser.find_element(By.ID, "status").get_attribute("class") != "error"

    expected = httpx.post(f"{url}/translate", json={"text": [sentence]}, timeout=60).json()["translations"][0][0]
    assert translation == expected["text"]
    target = vocab.id_pieces(expected["tokens"]) + ["</s>"]
    source = vocab.pieces(sentence) + ["</s>"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#heatmap tbody tr")
    assert len(rows) == len(target)  # one row per target piece
    assert [r.find_element(By.TAG_NAME, "th").get_attribute("textContent") for r in rows] == target
    assert {len(r.find_elements(By.TAG_NAME, "td")) for r in rows} == {len(source)}  # a column per source piece
    columns = [th.get_attribute("textContent") for th in browser.find_elements(By.CSS_SELECTOR, "#heatmap thead th")]
    assert columns[1:] == source
    weights = [float(td.get_attribute("data-weight")) for td in rows[0].find_elements(By.TAG_NAME, "td")]
    assert abs(sum(weights) - 1) < 1e-2  # a row is a distribution over the source

    shot = tmp_path / "serve_page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("SERVE_PAGE_SCREENSHOT"):
        shutil.copy(shot, os.environ["SERVE_PAGE_SCREENSHOT"])

    # One head of the first layer, then the encoder's self-attention: source x source.
    Select(browser.find_element(By.ID, "layer")).select_by_index(0)
    Select(browser.find_element(By.ID, "head")).select_by_value("1")
    assert "layer 1, head 2" in browser.find_element(By.ID, "map-caption").text
    Select(browser.find_element(By.ID, "map-kind")).select_by_value("encoder")
    rows = browser.find_elements(By.CSS_SELECTOR, "#heatmap tbody tr")
    assert len(rows) == len(source) and {len(r.find_elements(By.TAG_NAME, "td")) for r in rows} == {len(source)}


def test_the_n_best_list_shows_every_hypothesis_with_its_score(server, browser):
    url, _ = server
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda b: "parameters" in b.find_element(By.ID, "model-info").text)
    browser.find_element(By.ID, "source").send_keys(SAMPLE_SENTENCES[1] + "\n" + SAMPLE_SENTENCES[2])
    nbest = browser.find_element(By.ID, "nbest")
    nbest.clear()
    nbest.send_keys("3")
    browser.find_element(By.ID, "translate").click()
    WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#heatmap tbody tr"))
    results = browser.find_elements(By.CSS_SELECTOR, ".result")
    assert len(results) == 2
    for result in results:
        scores = [float(s.text) for s in result.find_elements(By.CSS_SELECTOR, ".score")]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    second = results[1].find_elements(By.CSS_SELECTOR, ".hyp")[2]  # the second line's third hypothesis
    second.click()
    WebDriverWait(browser, 30).until(lambda b: "chosen" in second.get_attribute("class"))
    tokens = browser.execute_script("return state.results[1][2].tokens.length")
    WebDriverWait(browser, 30).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "#heatmap tbody tr")) == tokens + 1
    )
