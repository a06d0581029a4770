"""The playground in a real browser: Debian's chromium + chromedriver driven by selenium (headless, no network:
the driver is /usr/bin/chromedriver, never a download). Draw a stroke and read the probabilities; type a
prompt and watch the text stream in; translate; sample; screenshots into the test's tmp_path."""
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium and chromium-driver are not "
                                "installed (make setup installs them: apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,900",
              "--disable-extensions", "--no-first-run", "--disable-background-networking"):
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)  # an explicit driver: selenium-manager never runs
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def _wait(d, cond, timeout=20):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    # the page re-renders as answers arrive: an element that went stale (or is not there yet) means "look again"
    return WebDriverWait(d, timeout, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)
                         ).until(cond)


def _probabilities(d, name: str) -> dict[str, float]:
    # One snapshot taken inside the page: the bars are re-rendered on every answer while a stroke is drawn, so
    # element handles fetched one by one can go stale between two calls (a StaleElementReferenceException in CI).
    rows = d.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(r => "
        "[r.getAttribute('data-name'), (r.querySelector('.pct') || {}).textContent || '']);", f"#probs-{name} .bar")
    return {n: float(t.strip().rstrip("%")) for n, t in rows if t.strip()}


def test_draw_a_digit_and_read_the_probabilities(browser, url, handles, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    d = browser
    d.get(url + "/")
    _wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert {p.get_attribute("data-family") for p in d.find_elements(By.CSS_SELECTOR, "section.panel")} == {
        "classifier", "language-model", "translator", "diffusion"}
    canvas = d.find_element(By.ID, "canvas-digits")
    ActionChains(d).move_to_element_with_offset(canvas, 0, -70).click_and_hold().move_by_offset(0, 35) \
        .move_by_offset(0, 35).move_by_offset(0, 35).move_by_offset(0, 35).release().perform()  # a vertical stroke
    _wait(d, lambda d: len(_probabilities(d, "digits")) == 10)
    probs = _probabilities(d, "digits")
    assert set(probs) == set(handles["digits"].classes) and abs(sum(probs.values()) - 100) < 1.0
    # what the page shows is what the handle says of the page's own drawing
    import base64
    import io

    from PIL import Image
    png = d.execute_script("return document.getElementById('canvas-digits').toDataURL('image/png')")
    drawn = Image.open(io.BytesIO(base64.b64decode(png.split(",", 1)[1])))
    want = handles["digits"].predict(drawn, top_k=1)[0]["top"][0]
    _wait(d, lambda d: (p := _probabilities(d, "digits")) and max(p, key=p.get) == want["class"])
    assert len(d.find_elements(By.CSS_SELECTOR, "#maps-digits img")) == 8  # cnn-small's conv1: 8 maps
    d.save_screenshot(str(tmp_path / "classifier.png"))
    assert (tmp_path / "classifier.png").stat().st_size > 10_000


def test_type_a_prompt_and_watch_the_text_stream(browser, url, tmp_path):
    from selenium.webdriver.common.by import By
    d = browser
    if d.current_url.rstrip("/") != url:
        d.get(url + "/")
    _wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    prompt = d.find_element(By.ID, "prompt-gpt")
    prompt.clear()
    prompt.send_keys("the cat")
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#next-gpt .bar"))  # the next-token distribution
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#attn-gpt canvas"))  # the attention heads
    d.execute_script("""
        const out = document.getElementById('out-gpt'); window.lengths = [];
        new MutationObserver(() => window.lengths.push(out.textContent.length))
            .observe(out, {childList: true, characterData: true, subtree: true});""")
    d.find_element(By.ID, "go-gpt").click()
    _wait(d, lambda d: d.find_element(By.ID, "out-gpt").get_attribute("data-done") == "1", 60)
    out = d.find_element(By.ID, "out-gpt").text
    assert out.startswith("the cat") and len(out) > len("the cat") + 50
    lengths = d.execute_script("return window.lengths")
    # It grew piece by piece: streamed, not one answer. One read of the response may carry several tokens' events,
    # appended in one task (one observer call), so how many lengths the page shows depends on the machine's speed:
    # 18 partial lengths for 200 tokens on a fast one. Five or more partial renders is streaming on any machine.
    partial = {n for n in lengths if len("the cat") < n < lengths[-1]}  # shown between the prompt and the end
    assert len(partial) >= 5, lengths
    d.save_screenshot(str(tmp_path / "language-model.png"))


def test_translate_and_sample_in_the_page(browser, url, handles, tmp_path):
    from selenium.webdriver.common.by import By
    d = browser
    d.get(url + "/")
    _wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    d.find_element(By.CSS_SELECTOR, "#panel-numbers button").click()
    want = handles["numbers"].translate(["1234"], to="en")[0]["translation"] or "(empty translation)"
    _wait(d, lambda d: d.find_element(By.ID, "translation-numbers").text == want)
    assert d.find_elements(By.CSS_SELECTOR, "#panel-numbers .heat canvas")
    d.find_element(By.ID, "text-numbers").clear()  # an error does not leave the last answer beside it
    d.find_element(By.CSS_SELECTOR, "#panel-numbers button").click()
    _wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "#panel-numbers .error").text)
    assert d.find_element(By.ID, "translation-numbers").text == ""
    assert not d.find_elements(By.CSS_SELECTOR, "#panel-numbers .heat canvas")
    d.find_element(By.CSS_SELECTOR, "#panel-unet button").click()
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#panel-unet .strip img")) >= 10, 60)
    _wait(d, lambda d: "x₀" in d.find_element(By.CSS_SELECTOR, "#panel-unet .col .muted").text, 30)
    d.set_window_size(1366, 1800)
    d.save_screenshot(str(tmp_path / "playground.png"))
    d.set_window_size(1366, 900)


def test_the_api_page_renders_without_the_internet(browser, url, client):
    """Before: /docs loaded Swagger UI from cdn.jsdelivr.net, and on a machine offline the page stayed blank."""
    from selenium.webdriver.common.by import By
    page = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in page and "cdn.jsdelivr.net" not in page
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    browser.get(url + "/docs")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))  # drawn from /openapi.json
    paths = {e.get_attribute("data-path") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert "/v1/completions" in paths and "/v1/models/{name}/predict" in paths, paths


def test_the_token_box_and_an_mlp_classifier(browser, tmp_path):
    """Before: a token holding "€" made fetch throw, and the page stayed blank for the rest of the session (the
    token was kept); a wrong token or Enter said nothing. An mlp's panel always asked for the first convolution's
    feature maps, so every drawing was a 400 and no probability was ever shown."""
    import dlforge
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from dlforge.serve import create_app, load_runs
    from tests.serve.conftest import live_server
    dlforge.train("mlp", data="digits", out=tmp_path / "mlp", img_size=8, max_steps=20, progress=False)
    token = "s3cret-token-0123456789"
    d = browser
    status = lambda d: d.find_element(By.ID, "status").text  # noqa: E731
    with live_server(create_app(load_runs([tmp_path / "mlp"], device="cpu"), token=token)) as url:
        d.get(url + "/")
        _wait(d, lambda d: status(d) == "this server needs a token")
        box = d.find_element(By.ID, "token")
        box.send_keys("€uro-token")
        d.find_element(By.ID, "token-go").click()
        assert status(d) == "a token is printable ASCII characters without spaces" and box.is_displayed()
        box.clear()
        box.send_keys("wrong-token\n")  # Enter uses it
        _wait(d, lambda d: status(d) == "that token was refused; try again")
        box = d.find_element(By.ID, "token")
        box.clear()
        box.send_keys(token + "\n")
        _wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        canvas = d.find_element(By.ID, "canvas-mlp")
        ActionChains(d).move_to_element_with_offset(canvas, 0, -50).click_and_hold().move_by_offset(0, 50) \
            .move_by_offset(0, 50).release().perform()
        _wait(d, lambda d: len(_probabilities(d, "mlp")) == 10)
        assert d.find_element(By.CSS_SELECTOR, "#panel-mlp .error").text == ""
        assert "feature maps" not in d.find_element(By.ID, "panel-mlp").text
        d.get(url + "/")  # the token is kept for the session
        _wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    d.execute_script("sessionStorage.clear()")
