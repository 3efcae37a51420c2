"""`registry serve`'s pages in a real browser: Debian's headless Chromium driven by Selenium.

One server and one browser serve the whole module; the tests run in file order and
each starts from a URL of its own. Assertions read what a person sees (element
text), never the HTML source. Screenshots of the three pages go to a folder of the
test run and, with REGISTRY_SCREENSHOTS=DIR, also to DIR (`docs/` for the README).
Under CI=true a missing Chromium or chromedriver fails instead of skipping.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import IN_CI
from helpers import TINY, Server, tiny
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from registry import Registry

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
XSS = "<script>alert(1)</script>"
HTML_DESCRIPTION = "<b>bold</b> and <img src=x onerror=alert(2)>"
# Seconds for a page or a download, at most: the first diff a server computes imports
# torch, which takes from seconds to half a minute on a cold machine.
WAIT = 60
# Read at import, from where pytest was started: the tests themselves run in tmp_path.
EXTRA_SCREENSHOTS = (
    Path(os.environ["REGISTRY_SCREENSHOTS"]).resolve()
    if os.environ.get("REGISTRY_SCREENSHOTS")
    else None
)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A SQLite home with a base model, three versions of it, a fine-tune and `team/detector`."""
    home = tmp_path_factory.mktemp("browser-home")
    files = tmp_path_factory.mktemp("browser-files")
    base = tiny(0).state_dict()

    def saved(name: str, state: dict[str, torch.Tensor]) -> Path:
        path = files / name
        torch.save(state, path)
        return path

    v2 = {**base, "features.0.weight": base["features.0.weight"] * 2}
    v3 = {**v2, "features.1.running_mean": base["features.1.running_mean"] + 1}
    tuned = {**base, "head.weight": torch.randn(5, 4), "head.bias": torch.randn(5)}
    with Registry(home=home) as reg:
        reg.push(saved("v1.pt", base), name="tinynet", tags={"stage": "base"}, **TINY)
        reg.push(saved("v2.pt", v2), name="tinynet", tags={"note": XSS}, **TINY)
        reg.push(
            saved("v3.pt", v3), name="tinynet", aliases=["production"], tags={"stage": "prod"},
            **TINY,
        )  # fmt: skip
        reg.set_alias("tinynet@v2", "staging")
        tuned_path = saved("tuned.pt", tuned)
        reg.push(
            tuned_path, name="tinynet-tuned", parent="tinynet@v1",
            description=HTML_DESCRIPTION, **TINY,
        )  # fmt: skip
        reg.push(saved("detector.pt", base), name="team/detector", **TINY)
        versions = {v.ref: v for m in reg.models() for v in reg.versions(m.name)}
    return {
        "home": home,
        "versions": versions,
        "tensor_names": list(base),
        "tuned_bytes": tuned_path.read_bytes(),
    }


@pytest.fixture(scope="module")
def server(pushed: dict[str, Any]) -> Iterator[Server]:
    served = Server(pushed["home"])
    yield served
    served.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(downloads: Path) -> Iterator[Any]:
    """One headless Chromium for the module, from Debian's packages: nothing is downloaded."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        message = f"{' and '.join(missing)} not found: apt-get install chromium chromium-driver"
        if IN_CI:
            pytest.fail(f"{message} (CI must run the browser tests)")
        pytest.skip(message)
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    browser.set_page_load_timeout(WAIT)
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


# -- helpers -------------------------------------------------------------------------------


def texts(driver: Any, css: str) -> list[str]:
    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, css)]


def column(driver: Any, table: str, index: int) -> list[str]:
    """The visible text of column `index` (0-based) of each body row of table `table`."""
    return texts(driver, f"{table} tbody tr td:nth-child({index + 1})")


def follow(driver: Any, element: WebElement) -> None:
    """Click a link or a submit button and wait until the next page has replaced this one.

    The old page carries a mark the new one lacks. Asking an element whether it went stale
    races the navigation: mid-swap chromedriver answers "Node with given id does not belong
    to the document", an unknown error rather than a stale reference, so each question that
    falls into the swap is ignored and asked again.
    """
    driver.execute_script("window.leaving = true")
    element.click()
    WebDriverWait(driver, WAIT, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script(
            "return window.leaving === undefined && document.readyState === 'complete'"
        )
    )


def link(driver: Any, text: str) -> WebElement:
    return driver.find_element(By.LINK_TEXT, text)


def fields(driver: Any) -> dict[str, str]:
    """The version page's recorded fields, as shown: `dt` text -> `dd` text."""
    keys = texts(driver, "#fields dt")
    values = texts(driver, "#fields dd")
    assert len(keys) == len(values)
    return dict(zip(keys, values, strict=True))


def no_alert(driver: Any) -> None:
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 - reading it is the check


def screenshot(driver: Any, folder: Path, name: str) -> None:
    """The whole page laid out 1280 px wide, in `folder` and in REGISTRY_SCREENSHOTS if set."""
    driver.execute_script("document.activeElement.blur()")  # no caret in the filter box
    metrics = {"width": 1280, "height": 400, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        metrics["height"] = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        png = driver.get_screenshot_as_png()
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    for target in filter(None, (folder, EXTRA_SCREENSHOTS)):
        target.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(png)


def changed_tensors(driver: Any, table: str) -> set[str]:
    rows = zip(column(driver, table, 0), column(driver, table, 1), strict=True)
    return {name for name, status in rows if status == "changed"}


# -- the pages -----------------------------------------------------------------------------


def test_models_page_lists_every_model(
    driver: Any, server: Server, pushed: dict[str, Any], screenshots: Path
) -> None:
    driver.get(server.url + "/")
    assert driver.title == "Models · registry"
    assert driver.find_element(By.TAG_NAME, "h1").text == "Models"
    names = column(driver, "#models", 0)
    assert sorted(names) == ["team/detector", "tinynet", "tinynet-tuned"]
    row = dict(zip(names, driver.find_elements(By.CSS_SELECTOR, "#models tbody tr"), strict=True))
    cells = texts(row["tinynet"], "td")
    assert cells[1:3] == ["3", "v3"]
    assert sorted(texts(row["tinynet"], ".pill")) == ["production=v3", "staging=v2"]
    screenshot(driver, screenshots, "web-models.png")


def test_filter_box_narrows_the_table(driver: Any, server: Server) -> None:
    driver.get(server.url + "/")
    box = driver.find_element(By.NAME, "q")
    box.send_keys("detect")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]"))
    assert column(driver, "#models", 0) == ["team/detector"]
    assert driver.find_element(By.NAME, "q").get_attribute("value") == "detect"

    box = driver.find_element(By.NAME, "q")
    box.clear()
    box.send_keys("tuned")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]"))
    assert column(driver, "#models", 0) == ["tinynet-tuned"]

    box = driver.find_element(By.NAME, "q")
    box.clear()
    box.send_keys("nothing-like-it")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]"))
    assert driver.find_elements(By.CSS_SELECTOR, "#models") == []
    assert "No model name contains" in driver.find_element(By.TAG_NAME, "main").text

    follow(driver, link(driver, "Show all"))
    assert len(column(driver, "#models", 0)) == 3


def test_model_page_lists_versions_newest_first(
    driver: Any, server: Server, pushed: dict[str, Any], screenshots: Path
) -> None:
    versions = pushed["versions"]
    driver.get(server.url + "/")
    follow(driver, link(driver, "tinynet"))
    assert driver.title == "tinynet · registry"
    assert driver.find_element(By.TAG_NAME, "h1").text == "tinynet"
    assert column(driver, "#versions", 0) == ["tinynet@v3", "tinynet@v2", "tinynet@v1"]
    digests = [versions[f"tinynet@v{n}"].sha256[:12] for n in (3, 2, 1)]
    assert column(driver, "#versions", 1) == digests
    assert column(driver, "#versions", 3) == [TINY["arch"]] * 3
    assert column(driver, "#versions", 4) == ["stage=prod", f"note={XSS}", "stage=base"]
    assert column(driver, "#versions", 5) == ["production", "staging", ""]
    assert column(driver, "#versions", 8) == ["-", "-", "-"]
    no_alert(driver)
    screenshot(driver, screenshots, "web-model.png")

    driver.get(server.url + "/")
    follow(driver, link(driver, "team/detector"))
    assert driver.find_element(By.TAG_NAME, "h1").text == "team/detector"
    assert column(driver, "#versions", 0) == ["team/detector@v1"]
    assert driver.find_elements(By.CSS_SELECTOR, "form[action='/diff']") == []  # one version

    driver.get(server.url + "/")
    follow(driver, link(driver, "tinynet-tuned"))
    assert column(driver, "#versions", 8) == ["tinynet@v1"]


def test_version_page_shows_fields_tensors_lineage_and_parent_diff(
    driver: Any, server: Server, pushed: dict[str, Any], screenshots: Path
) -> None:
    tuned = pushed["versions"]["tinynet-tuned@v1"]
    driver.get(server.url + "/")
    follow(driver, link(driver, "tinynet-tuned"))
    follow(driver, link(driver, "tinynet-tuned@v1"))
    assert driver.title == "tinynet-tuned@v1 · registry"
    assert driver.find_element(By.TAG_NAME, "h1").text == "tinynet-tuned@v1"

    shown = fields(driver)
    assert shown["sha256"] == tuned.sha256  # in full, as one selectable string
    assert len(shown["sha256"]) == 64
    assert shown["ref"] == "tinynet-tuned@v1"
    assert shown["arch"] == TINY["arch"]
    assert shown["parent"] == "tinynet@v1"
    assert shown["size"] == str(tuned.size)
    assert shown["description"] == HTML_DESCRIPTION  # as text, not as markup
    assert driver.find_elements(By.CSS_SELECTOR, "#fields dd b, #fields dd img") == []
    assert {"num_classes=5", "width=4"} <= set(texts(driver, "#fields dd .pill"))

    assert driver.find_element(By.ID, "tensors").get_attribute("open") is not None
    assert column(driver, "#tensors table", 0) == pushed["tensor_names"]
    shapes = dict(
        zip(column(driver, "#tensors table", 0), column(driver, "#tensors table", 2), strict=True)
    )
    assert shapes["head.weight"] == "5 \N{MULTIPLICATION SIGN} 4"
    assert shapes["features.1.num_batches_tracked"] == "scalar"

    assert texts(driver, "#lineage li") == ["tinynet@v1", "tinynet-tuned@v1"]

    diff = "#parent-diff table"
    assert changed_tensors(driver, diff) == {"head.weight", "head.bias"}
    statuses = column(driver, diff, 1)
    assert statuses.count("identical") == len(pushed["tensor_names"]) - 2
    summary = driver.find_element(By.CSS_SELECTOR, "#parent-diff .summary").text
    assert "2 changed" in summary
    screenshot(driver, screenshots, "web-version.png")

    follow(driver, link(driver, "tinynet@v1"))  # the parent, from the lineage list
    assert driver.find_element(By.TAG_NAME, "h1").text == "tinynet@v1"
    assert driver.find_element(By.ID, "parent-diff").text == "no parent"
    assert texts(driver, "#lineage li") == ["tinynet@v1", "tinynet-tuned@v1"]


def test_back_button_returns_through_the_pages(driver: Any, server: Server) -> None:
    driver.get(server.url + "/")
    follow(driver, link(driver, "tinynet"))
    follow(driver, link(driver, "tinynet@v2"))
    assert driver.find_element(By.TAG_NAME, "h1").text == "tinynet@v2"

    driver.back()
    WebDriverWait(driver, WAIT).until(ec.title_is("tinynet · registry"))
    assert column(driver, "#versions", 0)[0] == "tinynet@v3"
    driver.back()
    WebDriverWait(driver, WAIT).until(ec.title_is("Models · registry"))
    assert len(column(driver, "#models", 0)) == 3
    driver.forward()
    WebDriverWait(driver, WAIT).until(ec.title_is("tinynet · registry"))


def test_compare_form_diffs_two_picked_versions(driver: Any, server: Server) -> None:
    driver.get(server.url + "/models/tinynet")
    older = Select(driver.find_element(By.NAME, "a"))
    newer = Select(driver.find_element(By.NAME, "b"))
    assert older.first_selected_option.text == "tinynet@v2"  # the two newest, by default
    assert newer.first_selected_option.text == "tinynet@v3"
    older.select_by_visible_text("tinynet@v1")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form[action='/diff'] button"))

    assert driver.find_element(By.TAG_NAME, "h1").text == "diff tinynet@v1 → tinynet@v3"
    assert driver.title == "diff tinynet@v1 tinynet@v3 · registry"
    assert changed_tensors(driver, "table.diff") == {"features.0.weight", "features.1.running_mean"}

    driver.back()
    WebDriverWait(driver, WAIT).until(ec.title_is("tinynet · registry"))


def test_download_link_gives_the_pushed_bytes(
    driver: Any, server: Server, pushed: dict[str, Any], downloads: Path
) -> None:
    driver.get(server.url + "/refs/tinynet-tuned@v1")
    button = driver.find_element(By.ID, "download")
    assert button.text == "Download tinynet-tuned-v1.pt"
    button.click()
    target = downloads / "tinynet-tuned-v1.pt"
    WebDriverWait(driver, WAIT).until(
        lambda _: target.exists() and not list(downloads.glob("*.crdownload")),
        f"no download in {WAIT}s",
    )
    assert target.read_bytes() == pushed["tuned_bytes"]


def test_html_in_tags_and_descriptions_shows_as_text(driver: Any, server: Server) -> None:
    driver.get(server.url + "/refs/tinynet@v2")
    no_alert(driver)
    assert f"note={XSS}" in texts(driver, "#fields dd .pill")
    assert XSS in driver.find_element(By.TAG_NAME, "main").text
    assert driver.find_elements(By.CSS_SELECTOR, "main script") == []

    driver.get(server.url + "/refs/tinynet-tuned@v1")
    no_alert(driver)
    assert fields(driver)["description"] == HTML_DESCRIPTION


# -- with a token --------------------------------------------------------------------------


def test_token_login_by_cookie_and_never_printed(driver: Any, pushed: dict[str, Any]) -> None:
    token = secrets.token_urlsafe(16)
    guarded = Server(pushed["home"], "--token", token)
    try:
        driver.delete_all_cookies()  # cookies go by host, not port: start logged out
        driver.get(guarded.url + "/")
        assert driver.find_element(By.TAG_NAME, "h1").text == "401"
        assert "a token is needed" in driver.find_element(By.TAG_NAME, "main").text
        assert driver.find_elements(By.ID, "models") == []

        driver.get(guarded.url + "/?token=not-the-token")
        assert driver.find_element(By.TAG_NAME, "h1").text == "401"

        driver.get(f"{guarded.url}/?token={token}")
        assert driver.current_url == guarded.url + "/"  # out of the address bar and history
        assert len(column(driver, "#models", 0)) == 3
        assert token not in driver.find_element(By.TAG_NAME, "body").text
        follow(driver, link(driver, "tinynet"))
        follow(driver, link(driver, "tinynet@v1"))
        assert fields(driver)["sha256"] == pushed["versions"]["tinynet@v1"].sha256
        driver.delete_all_cookies()
        driver.refresh()
        assert driver.find_element(By.TAG_NAME, "h1").text == "401"
    finally:
        output = guarded.stop()
    assert guarded.process.returncode == 0, output
    assert "GET / 303" in output  # requests are logged, without their query strings
    assert token not in output
