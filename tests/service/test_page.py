"""The try-it page at /, driven in a real browser (Debian's chromium) against a live server."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

import kerve_manifest
from tests.helpers import (
    build_conv_denoiser,
    encode,
    live_server,
    make_settings,
    publish_captioner,
    publish_colour_classifier,
    publish_colour_segmenter,
    publish_denoiser,
    publish_generator,
    publish_upscaler,
    solid,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MODELS = ("colours", "regions", "captioner", "denoiser", "upscaler", "generator")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)",
)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    root = tmp_path_factory.mktemp("page") / "models"
    publish_colour_classifier(root, "colours")
    publish_colour_segmenter(root, "regions")
    publish_captioner(root, "captioner")
    publish_denoiser(root, "denoiser", model=build_conv_denoiser())
    publish_generator(root, "generator")
    publish_upscaler(root, "upscaler", scale=3)
    (root / "upcoming").mkdir()  # announced by the demo zoo, not yet published
    (root / "upcoming" / kerve_manifest.PENDING_FILE).write_text('{"reason": "training, 40%"}')
    with live_server(make_settings(root, poll_interval_s=0)) as address:
        yield address


@pytest.fixture(scope="module")
def browser(url, tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1100,800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options
    )
    try:
        driver.set_window_size(1100, 800)
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser, url):
    """The page, freshly loaded, once every test model is listed."""
    browser.get(f"{url}/")
    wait(browser).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) >= len(MODELS)
    )
    return browser


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("KERVE_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait(driver, timeout_s: float = 20):
    return WebDriverWait(driver, timeout_s)


def choose_model(driver, name: str) -> None:
    select = Select(driver.find_element(By.ID, "model"))
    values = [option.get_attribute("value") for option in select.options]
    select.select_by_value(next(value for value in values if value.startswith(f"{name}@")))


def upload(driver, path: Path) -> None:
    driver.find_element(By.ID, "file").send_keys(str(path))
    wait(driver).until(lambda d: d.find_element(By.ID, "run").is_enabled())


def run_and_wait(driver, selector: str):
    """Click Run; the first element matching ``selector`` once the answer is drawn."""
    driver.find_element(By.ID, "run").click()
    found = wait(driver).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, selector))
    )
    assert not driver.find_element(By.ID, "error").is_displayed()
    return found


def natural_size(driver, image) -> tuple[int, int]:
    wait(driver).until(lambda d: d.execute_script("return arguments[0].complete", image))
    return tuple(driver.execute_script("return [arguments[0].naturalWidth, "
                                       "arguments[0].naturalHeight]", image))  # fmt: skip


def assert_meta(driver, model: str) -> None:
    assert re.fullmatch(r"\d+ ms", driver.find_element(By.ID, "latency").text)
    assert driver.find_element(By.ID, "answered-by").text == f"{model} v1"


def write_png(path: Path, array: np.ndarray) -> Path:
    path.write_bytes(encode(array, "PNG"))
    return path


def test_root_serves_the_page_and_its_files(url):
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<select id="model"' in page.text
    for path in ("/ui/app.js", "/ui/style.css", "/ui/samples/cat.jpg"):
        assert httpx.get(f"{url}{path}").status_code == 200, path
    assert "/" not in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_classification_draws_label_bars(page, tmp_path, screenshots):
    choose_model(page, "colours")
    # What the model knows, from its manifest's description, is shown with it.
    assert page.find_element(By.ID, "model-description").text == "test model: dominant colour"
    upload(page, write_png(tmp_path / "red.png", solid((220, 30, 40), (64, 48))))
    run_and_wait(page, "#result .bar")
    bars = page.find_elements(By.CSS_SELECTOR, "#result .bar")
    assert [bar.get_attribute("data-label") for bar in bars][0] == "red"
    assert len(bars) == 3  # the default top_k, 5, capped at the model's 3 classes
    assert_meta(page, "colours")
    page.save_screenshot(str(screenshots / "classify.png"))


def test_segmentation_draws_the_mask_over_the_image(page, tmp_path, screenshots):
    scene = solid((128, 128, 128), (64, 48))
    scene[8:40, 6:28] = (230, 20, 20)
    scene[12:36, 36:58] = (20, 20, 230)
    choose_model(page, "regions")
    upload(page, write_png(tmp_path / "scene.png", scene))
    mask = run_and_wait(page, "#result img.mask")
    assert natural_size(page, mask) == (64, 48)
    legend = page.find_elements(By.CSS_SELECTOR, "#result .legend li")
    assert {item.get_attribute("data-label") for item in legend} == {"background", "red", "blue"}
    assert_meta(page, "regions")
    page.save_screenshot(str(screenshots / "segment.png"))


def test_captioning_shows_the_caption_and_other_beams(page, screenshots):
    choose_model(page, "captioner")
    Select(page.find_element(By.ID, "beam-size")).select_by_value("4")
    page.find_element(By.CSS_SELECTOR, 'button.sample[data-sample="cat"]').click()
    wait(page).until(lambda d: d.find_element(By.ID, "run").is_enabled())
    caption = run_and_wait(page, "#result .caption")
    assert caption.text.strip()
    assert page.find_elements(By.CSS_SELECTOR, "#result .alternatives li")
    assert_meta(page, "captioner")
    page.save_screenshot(str(screenshots / "caption.png"))


def test_denoising_shows_the_noisy_input_beside_the_denoised(page, screenshots):
    choose_model(page, "denoiser")
    page.find_element(By.CSS_SELECTOR, 'button.sample[data-sample="coffee"]').click()
    wait(page).until(lambda d: d.find_element(By.ID, "run").is_enabled())
    page.find_element(By.ID, "add-noise").click()
    wait(page).until(lambda d: "noisy" in d.find_element(By.ID, "input-note").text)
    denoised = run_and_wait(page, "#result img.denoised")
    noisy = page.find_element(By.CSS_SELECTOR, "#result img.noisy")
    assert natural_size(page, denoised) == natural_size(page, noisy) == (384, 256)
    assert_meta(page, "denoiser")
    page.save_screenshot(str(screenshots / "denoise.png"))


def test_upscaling_shows_the_sent_image_beside_the_upscaled(page, screenshots):
    choose_model(page, "upscaler")
    page.find_element(By.CSS_SELECTOR, 'button.sample[data-sample="coffee"]').click()
    wait(page).until(lambda d: d.find_element(By.ID, "run").is_enabled())
    page.find_element(By.ID, "shrink").click()
    wait(page).until(lambda d: "half" in d.find_element(By.ID, "input-note").text)
    upscaled = run_and_wait(page, "#result img.upscaled")
    sent = page.find_element(By.CSS_SELECTOR, "#result img.low-res")
    assert natural_size(page, sent) == (192, 128)
    assert natural_size(page, upscaled) == (576, 384)
    size = page.find_element(By.CSS_SELECTOR, "#result .output-size").text
    assert size == "upscaled 3× to 576×384"
    assert_meta(page, "upscaler")
    page.save_screenshot(str(screenshots / "upscale.png"))


def test_generation_draws_a_grid_of_the_count_asked(page, screenshots):
    choose_model(page, "generator")
    Select(page.find_element(By.ID, "label")).select_by_value("square")
    for field, value in (("count", "6"), ("seed", "42")):
        page.find_element(By.ID, field).clear()
        page.find_element(By.ID, field).send_keys(value)
    run_and_wait(page, "#result .generated img")
    images = page.find_elements(By.CSS_SELECTOR, "#result .generated img")
    assert len(images) == 6
    assert natural_size(page, images[0]) == (12, 12)
    assert_meta(page, "generator")
    page.save_screenshot(str(screenshots / "generate.png"))


def test_models_still_to_come_are_listed(page):
    (item,) = page.find_elements(By.CSS_SELECTOR, "#pending li")
    assert item.get_attribute("data-model") == "upcoming"
    assert item.text == "upcoming training, 40%"


def test_an_undecodable_file_shows_the_api_error(page, url, tmp_path, screenshots):
    garbage = np.random.default_rng(0).bytes(300)
    path = tmp_path / "x.png"
    path.write_bytes(garbage)
    expected = httpx.post(
        f"{url}/v1/models/colours/classify",
        content=garbage,
        headers={"Content-Type": "image/png"},
    ).json()["error"]["message"]
    choose_model(page, "colours")
    upload(page, path)
    page.find_element(By.ID, "run").click()
    error = wait(page).until(expected_conditions.visibility_of_element_located((By.ID, "error")))
    assert error.text == expected
    assert not page.find_elements(By.CSS_SELECTOR, "#result .bar")
    page.save_screenshot(str(screenshots / "error.png"))


PAGE_KEY = "page-key-Z8rT3vQm1"


@pytest.fixture(scope="module")
def keyed_url(tmp_path_factory):
    """A server with API keys on, serving the colour classifier."""
    root = tmp_path_factory.mktemp("keyed") / "models"
    publish_colour_classifier(root, "colours")
    with live_server(make_settings(root, poll_interval_s=0, api_keys=PAGE_KEY)) as address:
        yield address


def test_with_api_keys_on_the_page_asks_for_a_key_and_sends_it(browser, keyed_url, tmp_path):
    browser.get(f"{keyed_url}/")
    error = wait(browser).until(expected_conditions.visibility_of_element_located((By.ID, "error")))
    assert "needs an API key" in error.text
    field = browser.find_element(By.ID, "api-key")
    field.send_keys("not-the-key", Keys.TAB)
    wait(browser).until(lambda d: "refused this API key" in d.find_element(By.ID, "error").text)
    field.clear()
    field.send_keys(PAGE_KEY, Keys.TAB)  # every fetch now carries it as X-API-Key
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option[value^=colours]"))
    assert not browser.find_element(By.ID, "error").is_displayed()
    choose_model(browser, "colours")
    upload(browser, write_png(tmp_path / "blue.png", solid((20, 30, 220), (32, 32))))
    run_and_wait(browser, "#result .bar")
    assert (
        browser.find_elements(By.CSS_SELECTOR, "#result .bar")[0].get_attribute("data-label")
        == "blue"
    )
    browser.refresh()  # the key is remembered (localStorage)
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option[value^=colours]"))
    assert browser.find_element(By.ID, "api-key").get_attribute("value") == PAGE_KEY
