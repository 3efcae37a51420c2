"""`registry serve`'s pages in a real browser: Debian's headless Chromium driven by Selenium.

One server and one browser serve the whole module; the tests run in file order and
each starts from a URL of its own. Assertions read what a person sees (element
text), never the HTML source. Screenshots of the three pages, and of a version's forms,
go to a folder of the test run and, with REGISTRY_SCREENSHOTS=DIR, also to DIR (`docs/`
for the README). A second server, over a home with tokens, serves the page's forms, its
search by tag and its pages of 50; changes made there are checked in the audit log.
Under CI=true a missing Chromium or chromedriver fails instead of skipping.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
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
from registry.errors import NotFoundError
from registry.records import AuditEntry
from registry.server.access import COOKIE
from registry.server.pages import PAGE_SIZE, csrf_token

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


def log_in(driver: Any, server: Server, secret: str) -> None:
    """Open `/?token=SECRET` as a person does, logged out first: cookies go by host, not port."""
    driver.delete_all_cookies()
    driver.get(f"{server.url}/?token={secret}")
    assert driver.current_url == server.url + "/"


def row_button(driver: Any, table: str, first_cell: str) -> WebElement:
    """The button in the row of table `table` whose first cell reads `first_cell`."""
    for row in driver.find_elements(By.CSS_SELECTOR, f"{table} tbody tr"):
        if row.find_element(By.CSS_SELECTOR, "td").text == first_cell:
            return row.find_element(By.CSS_SELECTOR, "button")  # type: ignore[no-any-return]
    raise AssertionError(f"no row {first_cell!r} in {table}: {column(driver, table, 0)}")


def newest_change(home: Path) -> AuditEntry:
    with Registry(home=home) as reg:
        return reg.log(limit=1)[0]


def error_line(driver: Any) -> tuple[str, str]:
    """What an error page shows: its status and its one line."""
    return driver.find_element(By.TAG_NAME, "h1").text, driver.find_element(
        By.CSS_SELECTOR, ".error"
    ).text


@contextlib.contextmanager
def foreign_site(page: str) -> Iterator[str]:
    """Another web server, in a thread on another port of 127.0.0.1, serving `page` at `/`.

    Another port of the same host is the hardest case: it is the same *site*, so the
    browser sends the SameSite=Strict login cookie along, and only the registry's own
    checks (Origin, the form's CSRF token) stand between its form and a change.
    """
    body = page.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}"
    finally:
        site.shutdown()
        site.server_close()
        thread.join()


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


# -- a team's server: the page's forms, search by tag, pages of 50 -------------------------

LINEAR_ARCH = {"arch": "torch.nn:Linear", "arch_args": {"in_features": 4, "out_features": 3}}
BULK = PAGE_SIZE + 2  # models tagged kind=bulk, and versions of `many`, beyond one page
MARKDOWN = "Fine-tuned on **CIFAR-10**.\n\n- one\n- two\n\n<b>raw</b> <script>alert(3)</script>"


def linear(seed: float) -> dict[str, torch.Tensor]:
    """A tiny nn.Linear(4, 3) state_dict whose bytes differ with `seed`."""
    return {"weight": torch.full((3, 4), seed), "bias": torch.zeros(3)}


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A home with tokens, served: `team/vision` (three versions, two aliases), `many`
    (BULK versions tagged batch=odd/even), BULK models `bulk/mNN` tagged kind=bulk and
    `other/thing`; an `editor` (write), a `reader` (read) and an `outsider` (write, other/*)."""
    home = tmp_path_factory.mktemp("team-home")
    with Registry(home=home) as reg:
        for n, stage in enumerate(("base", "tuned", "prod"), start=1):
            reg.push(tiny(n).state_dict(), name="team/vision", tags={"stage": stage}, **TINY)
        reg.set_alias("team/vision@v3", "production")
        reg.set_alias("team/vision@v2", "staging")
        for n in range(1, BULK + 1):
            batch = "odd" if n % 2 else "even"
            reg.push(linear(n), name="many", tags={"batch": batch}, **LINEAR_ARCH)
            reg.push(linear(n), name=f"bulk/m{n:02d}", tags={"kind": "bulk"}, **LINEAR_ARCH)
        reg.push(linear(0), name="other/thing", **LINEAR_ARCH)
        secrets_of = {
            "editor": reg.create_token("editor", "write")[1],
            "reader": reg.create_token("reader", "read")[1],
            "outsider": reg.create_token("outsider", "write", ["other/*"])[1],
        }
    served = Server(home)
    yield {"home": home, "server": served, **secrets_of}
    served.stop()


def test_a_read_token_sees_no_forms(driver: Any, team: dict[str, Any]) -> None:
    server = team["server"]
    log_in(driver, server, team["reader"])
    driver.get(server.url + "/refs/team/vision@v1")
    assert driver.find_element(By.TAG_NAME, "h1").text == "team/vision@v1"
    assert fields(driver)["aliases"] == "-"
    assert driver.find_elements(By.ID, "edit") == []
    assert driver.find_elements(By.CSS_SELECTOR, "form[method=post], textarea") == []
    assert "Change" not in texts(driver, "h2")

    log_in(driver, server, team["outsider"])  # writes, but not to team/*
    driver.get(server.url + "/refs/team/vision@v1")
    assert driver.find_elements(By.CSS_SELECTOR, "form[method=post]") == []
    driver.get(server.url + "/refs/other/thing@v1")
    assert driver.find_element(By.ID, "edit").is_displayed()


def test_alias_moved_and_deleted_through_the_page(driver: Any, team: dict[str, Any]) -> None:
    server, home = team["server"], team["home"]
    log_in(driver, server, team["editor"])
    driver.get(server.url + "/refs/team/vision@v1")
    assert column(driver, "#model-aliases", 0) == ["production", "staging"]
    assert column(driver, "#model-aliases", 1) == ["team/vision@v3", "team/vision@v2"]

    driver.find_element(By.CSS_SELECTOR, "#alias-form input[name=alias]").send_keys("production")
    button = driver.find_element(By.CSS_SELECTOR, "#alias-form button")
    assert button.text == "Point at team/vision@v1"
    follow(driver, button)
    assert driver.current_url == server.url + "/refs/team/vision@v1"  # back on the page, a GET
    assert fields(driver)["aliases"] == "production"
    assert column(driver, "#model-aliases", 1) == ["team/vision@v1", "team/vision@v2"]
    change = newest_change(home)
    assert (change.action, change.actor, change.ref) == ("alias.set", "editor", "team/vision@v1")
    assert change.details["alias"] == "production"

    follow(driver, row_button(driver, "#model-aliases", "staging"))  # another version's alias
    assert driver.current_url == server.url + "/refs/team/vision@v1"
    assert column(driver, "#model-aliases", 0) == ["production"]
    with Registry(home=home) as reg:
        assert reg.get("team/vision@production").version == 1
        with pytest.raises(NotFoundError):
            reg.get("team/vision@staging")
    change = newest_change(home)
    assert (change.action, change.actor, change.ref) == ("alias.delete", "editor", "team/vision@v2")

    driver.find_element(By.CSS_SELECTOR, "#alias-form input[name=alias]").send_keys("v2")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "#alias-form button"))
    status, line = error_line(driver)
    assert status == "400"
    assert line.startswith("invalid alias 'v2':")
    assert newest_change(home) == change  # nothing was recorded


def test_tag_set_and_deleted_through_the_page(driver: Any, team: dict[str, Any]) -> None:
    server, home = team["server"], team["home"]
    log_in(driver, server, team["editor"])
    driver.get(server.url + "/refs/team/vision@v2")
    assert column(driver, "#version-tags", 0) == ["stage"]

    driver.find_element(By.CSS_SELECTOR, "#tag-form input[name=key]").send_keys("dataset")
    driver.find_element(By.CSS_SELECTOR, "#tag-form input[name=value]").send_keys("cifar10")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "#tag-form button"))
    assert driver.current_url == server.url + "/refs/team/vision@v2"
    assert {"dataset=cifar10", "stage=tuned"} <= set(texts(driver, "#fields dd .pill"))
    assert column(driver, "#version-tags", 0) == ["dataset", "stage"]
    assert column(driver, "#version-tags", 1) == ["cifar10", "tuned"]
    change = newest_change(home)
    assert (change.action, change.actor, change.ref) == ("tag.set", "editor", "team/vision@v2")
    assert change.details == {"tags": {"dataset": "cifar10"}}

    follow(driver, row_button(driver, "#version-tags", "stage"))
    assert column(driver, "#version-tags", 0) == ["dataset"]
    with Registry(home=home) as reg:
        assert reg.get("team/vision@v2").tags == {"dataset": "cifar10"}
    change = newest_change(home)
    assert (change.action, change.actor, change.ref) == ("tag.delete", "editor", "team/vision@v2")
    assert change.details == {"keys": ["stage"]}


def test_description_edited_and_shown_as_markdown(
    driver: Any, team: dict[str, Any], screenshots: Path
) -> None:
    server, home = team["server"], team["home"]
    log_in(driver, server, team["editor"])
    driver.get(server.url + "/refs/team/vision@v3")
    assert fields(driver)["description"] == "-"
    box = driver.find_element(By.CSS_SELECTOR, "#description-form textarea")
    box.clear()
    box.send_keys(MARKDOWN)
    follow(driver, driver.find_element(By.CSS_SELECTOR, "#description-form button"))

    assert driver.current_url == server.url + "/refs/team/vision@v3"
    no_alert(driver)
    assert texts(driver, "#fields .markdown strong") == ["CIFAR-10"]
    assert texts(driver, "#fields .markdown li") == ["one", "two"]
    shown = fields(driver)["description"]
    assert shown.startswith("Fine-tuned on CIFAR-10.")
    assert shown.endswith("<b>raw</b> <script>alert(3)</script>")  # as text, not as markup
    assert driver.find_elements(By.CSS_SELECTOR, "#fields b, main script") == []
    source = driver.find_element(By.CSS_SELECTOR, "#description-form textarea")
    assert source.get_attribute("value") == MARKDOWN  # the form holds the markdown itself
    with Registry(home=home) as reg:
        assert reg.get("team/vision@v3").description == MARKDOWN  # with \n, not the form's \r\n
    change = newest_change(home)
    assert (change.action, change.actor, change.ref) == ("describe", "editor", "team/vision@v3")
    screenshot(driver, screenshots, "web-edit.png")


def test_a_form_beyond_the_token_is_refused(driver: Any, team: dict[str, Any]) -> None:
    server, home = team["server"], team["home"]
    before = newest_change(home)
    log_in(driver, server, team["outsider"])
    driver.get(server.url + "/refs/other/thing@v1")
    form = driver.find_element(By.ID, "tag-form")  # aimed at a model the token does not reach
    driver.execute_script("arguments[0].action = '/refs/team/vision@v1/tags'", form)
    driver.find_element(By.CSS_SELECTOR, "#tag-form input[name=key]").send_keys("pwned")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "#tag-form button"))
    status, line = error_line(driver)
    assert status == "403"
    assert line == "token 'outsider' may not tag model 'team/vision': it reaches only other/*"

    reader = {COOKIE: team["reader"]}  # a read token's cookie, with its own right csrf field
    response = httpx.post(
        server.url + "/refs/team/vision@v1/tags",
        data={"csrf": csrf_token(team["reader"]), "key": "pwned", "value": "1"},
        cookies=reader,
    )
    assert response.status_code == 403
    assert "its scope is read, and that needs write" in response.text
    assert newest_change(home) == before


def test_a_cross_site_post_is_refused(driver: Any, team: dict[str, Any]) -> None:
    server, home = team["server"], team["home"]
    before = newest_change(home)
    target = server.url + "/refs/team/vision@v1/tags"
    attack = (
        "<!doctype html><title>win a prize</title>"
        f"<form id='f' method='post' action='{target}'>"
        "<input name='csrf' value='forged'><input name='key' value='pwned'>"
        "<input name='value' value='yes'></form>"
        "<script>document.getElementById('f').submit()</script>"
    )
    log_in(driver, server, team["editor"])
    with foreign_site(attack) as site:
        driver.get(site + "/")
        WebDriverWait(driver, WAIT).until(lambda d: d.current_url == target)
        status, line = error_line(driver)
        assert status == "403"
        assert line.startswith(f"this form was sent from {site.removeprefix('http://')}, ")

        # The same POST with the cookie, two checks apart: either one refuses it alone.
        driver.get(server.url + "/refs/team/vision@v1")
        csrf = driver.find_element(By.NAME, "csrf").get_attribute("value")
        editor, own = {COOKIE: team["editor"]}, server.url
        tries = {
            "right csrf, foreign Origin": ({"csrf": csrf}, {"Origin": site}),
            "right csrf, foreign Referer": ({"csrf": csrf}, {"Referer": site + "/"}),
            "right csrf, opaque Origin": ({"csrf": csrf}, {"Origin": "null"}),
            "no csrf, own Origin": ({}, {"Origin": own}),
            "forged csrf, own Origin": ({"csrf": "0" * 64}, {"Origin": own}),
            "another token's csrf": ({"csrf": csrf_token(team["reader"])}, {"Origin": own}),
        }
        for label, (extra, headers) in tries.items():
            response = httpx.post(
                target, data={**extra, "key": "pwned", "value": "1"}, headers=headers,
                cookies=editor,
            )  # fmt: skip
            assert response.status_code == 403, (label, response.text)
    with Registry(home=home) as reg:
        assert "pwned" not in reg.get("team/vision@v1").tags
    assert newest_change(home) == before


def test_search_by_tag(driver: Any, team: dict[str, Any]) -> None:
    server = team["server"]
    log_in(driver, server, team["reader"])
    box = driver.find_element(By.NAME, "tag")
    box.send_keys("batch=odd")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]"))
    assert column(driver, "#models", 0) == ["many"]
    assert driver.find_element(By.NAME, "tag").get_attribute("value") == "batch=odd"

    follow(driver, link(driver, "many"))  # the model's versions, by the same tag
    odd = [f"many@v{n}" for n in range(BULK, 0, -1) if n % 2]
    assert column(driver, "#versions", 0) == odd
    assert set(column(driver, "#versions", 4)) == {"batch=odd"}
    assert driver.find_elements(By.ID, "pager") == []  # fewer than a page

    box = driver.find_element(By.NAME, "tag")
    box.clear()
    box.send_keys("batch=none-such")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]"))
    assert "No version of many is tagged batch=none-such." in texts(driver, "main p")

    driver.get(server.url + "/?tag=stage=prod&q=team")
    assert column(driver, "#models", 0) == ["team/vision"]
    driver.get(server.url + "/?tag=stage")
    status, line = error_line(driver)
    assert (status, line) == (
        "400",
        "invalid tag filter 'stage': give KEY=VALUE, such as stage=prod",
    )


def test_lists_come_fifty_a_page(driver: Any, team: dict[str, Any]) -> None:
    server = team["server"]
    log_in(driver, server, team["reader"])
    names = sorted(
        ["many", "other/thing", "team/vision"] + [f"bulk/m{n:02d}" for n in range(1, BULK + 1)]
    )
    assert column(driver, "#models", 0) == names[:PAGE_SIZE]
    pager = driver.find_element(By.ID, "pager")
    assert f"Page 1 of 2 ({len(names)} models)" in pager.text
    follow(driver, link(driver, "Next →"))
    assert driver.current_url == server.url + "/?page=2"
    assert column(driver, "#models", 0) == names[PAGE_SIZE:]
    follow(driver, link(driver, "← Previous"))
    assert driver.current_url == server.url + "/"
    assert len(column(driver, "#models", 0)) == PAGE_SIZE

    driver.get(server.url + "/?tag=kind%3Dbulk")  # the next page keeps the filter
    assert "Page 1 of 2 (52 models)" in driver.find_element(By.ID, "pager").text
    follow(driver, link(driver, "Next →"))
    assert driver.current_url == server.url + "/?tag=kind%3Dbulk&page=2"
    assert column(driver, "#models", 0) == [
        f"bulk/m{n:02d}" for n in range(PAGE_SIZE + 1, BULK + 1)
    ]
    assert driver.find_element(By.NAME, "tag").get_attribute("value") == "kind=bulk"

    driver.get(server.url + "/models/many")
    assert column(driver, "#versions", 0) == [
        f"many@v{n}" for n in range(BULK, BULK - PAGE_SIZE, -1)
    ]
    follow(driver, link(driver, "Next →"))
    assert driver.current_url == server.url + "/models/many?page=2"
    assert column(driver, "#versions", 0) == [f"many@v{n}" for n in range(BULK - PAGE_SIZE, 0, -1)]
    assert texts(driver, "#pager a") == ["← Previous"]  # the last page

    driver.get(server.url + "/models/many?page=3")
    assert error_line(driver) == ("400", "invalid page '3': give a page number from 1 to 2")
