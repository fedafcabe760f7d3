"""The web view in a real headless Chromium (selenium) against a real server running a
MultiNode job: every node shown, the console growing live, the timeline's barrier first
waiting on a named node then released, the JUnit download, accessibility, escaping, CSRF
and admin-only actions. Screenshots of each page go to build/screenshots/.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from boards import shared_with_boards
from lab import ROOT, ServiceProcess, stop_all, wait_for
from lavacli_lab import make_user, server_process, server_url

import services

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCREENSHOTS = ROOT / "build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

#: the server node syncs at once; the client first waits for a file (the gate)
JOB = """\
job_name: web view {name}
visibility: public
timeouts:
  job: {{minutes: 5}}
  action: {{minutes: 4}}
protocols:
  lava-multinode:
    roles:
      server: {{device_type: local, count: 1}}
      client: {{device_type: local, count: 1}}
    timeout: {{minutes: 4}}
actions:
- boot: {{role: [server, client]}}
- test:
    role: [server]
    definitions:
    - from: inline
      name: server
      path: inline/server.yaml
      repository:
        metadata: {{format: Lava-Test Test Definition 1.0, name: server}}
        run:
          steps:
          - echo '<script>window.pwned = 1</script>'
          - lava-sync ready
          - lava-test-case served --shell true
- test:
    role: [client]
    definitions:
    - from: inline
      name: client
      path: inline/client.yaml
      repository:
        metadata: {{format: Lava-Test Test Definition 1.0, name: client}}
        run:
          steps:
          - echo client-is-up
          - while [ ! -e {gate} ]; do sleep 0.1; done
          - echo client-passed-the-gate
          - lava-sync ready
          - lava-test-case connected --shell true
"""

#: WCAG checks run in the page: every form control has a label, and text contrast >= 4.5
A11Y_JS = r"""
function lum(c) {
  var m = c.match(/rgba?\(([\d.]+), ([\d.]+), ([\d.]+)(?:, ([\d.]+))?\)/);
  if (!m) return null;
  var v = [m[1], m[2], m[3]].map(function (x) {
    x = x / 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
  return {l: 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2], a: m[4] === undefined ? 1 : +m[4]};
}
function background(el) {
  for (; el; el = el.parentElement) {
    var b = lum(getComputedStyle(el).backgroundColor);
    if (b && b.a > 0) return b.l;
  }
  return 1;
}
var problems = [];
document.querySelectorAll("input:not([type=hidden]), select, textarea").forEach(function (el) {
  var labelled = el.getAttribute("aria-label") || el.closest("label") ||
    (el.id && document.querySelector('label[for="' + el.id + '"]'));
  if (!labelled) problems.push("no label: " + el.outerHTML.slice(0, 80));
});
document.querySelectorAll("body *").forEach(function (el) {
  var own = Array.prototype.some.call(el.childNodes, function (n) {
    return n.nodeType === 3 && n.textContent.trim(); });
  if (!own || !el.getClientRects().length) return;
  var fg = lum(getComputedStyle(el).color), bg = background(el);
  if (!fg) return;
  var hi = Math.max(fg.l, bg), lo = Math.min(fg.l, bg), ratio = (hi + 0.05) / (lo + 0.05);
  if (ratio < 4.5) problems.push("contrast " + ratio.toFixed(2) + ": " + el.outerHTML.slice(0, 80));
});
return problems;
"""


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("web")
    db_url = f"sqlite:///{tmp / 'lavamq.sqlite'}"
    tokens = {
        "admin": make_user(db_url, "admin", admin=True, cwd=tmp),
        "bob": make_user(db_url, "bob", cwd=tmp),
    }
    procs: list[ServiceProcess] = []
    try:
        procs.append(
            server_process(
                "--embedded", "--db", db_url, "--log-dir", str(tmp / "logs"),
                "--board", "local:3", cwd=tmp,
            ).start(120)
        )  # fmt: skip
        # the gates: where both this test and the boards see them (not the boards' /tmp)
        with shared_with_boards() as gates:
            yield {"url": server_url(procs[0]), "tokens": tokens, "tmp": tmp, "gates": gates}
    finally:
        stop_all(procs)


@pytest.fixture(scope="module")
def browser(web: dict[str, Any]) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        services.missing_service("chromium and chromium-driver (Debian packages)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = web["tmp"] / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1300,1600",
                f"--user-data-dir={web['tmp'] / 'chromium-profile'}"):  # fmt: skip
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    driver.downloads = downloads  # type: ignore[attr-defined]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def submit(web: dict[str, Any], name: str) -> tuple[int, Path]:
    gate = web["gates"] / f"gate-{name}"
    body = json.dumps({"definition": JOB.format(name=name, gate=gate)}).encode()
    req = urllib.request.Request(f"{web['url']}/api/v1/jobs", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {web['tokens']['admin']}")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return int(json.loads(resp.read())["job_id"]), gate


def wait_el(driver: Any, css: str, text: str | None = None, timeout: float = 120) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    if text is None:
        return wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
    return driver.find_element(By.CSS_SELECTOR, css)


def cells(driver: Any, css: str) -> list[str]:
    """The text of every element matching ``css``, read in one go."""
    found: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent.trim())",
        css,
    )
    return found


def shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def test_job_page_live_console_timeline_and_junit(browser: Any, web: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    job_id, gate = submit(web, "live")
    browser.get(f"{web['url']}/jobs/{job_id}")
    # (read in the page at once: the live parts replace the table as the job moves)
    assert cells(browser, "table.nodes tbody tr td:nth-child(2)") == ["server", "client"]
    # the client's board, by name, once it is known
    wait_el(browser, "#nodes", "Running")
    client = wait_for(
        lambda: cells(browser, "#node-1 td:nth-child(3)")[0].strip("- ") or None,
        60, "the client's device",
    )  # fmt: skip
    # the server reached the barrier; it waits for the client, named
    wait_el(browser, ".barrier.open .waiting-for", client)
    console = browser.find_element(By.CSS_SELECTOR, 'pre.console[data-node="1"]')
    wait_el(browser, 'pre.console[data-node="1"]', "client-is-up")
    before = len(console.find_elements(By.CSS_SELECTOR, "span.line"))
    shot(browser, "job-waiting")
    gate.touch()
    wait_el(browser, 'pre.console[data-node="1"]', "client-passed-the-gate")
    assert len(console.find_elements(By.CSS_SELECTOR, "span.line")) > before  # grew live
    wait_el(browser, '.barrier.released[data-message="ready"]')
    assert not browser.find_elements(By.CSS_SELECTOR, ".barrier.open")
    wait_el(browser, "#nodes", "Complete", timeout=180)
    # signals highlighted, console text escaped
    browser.get(f"{web['url']}/jobs/{job_id}")
    server_console = browser.find_element(By.CSS_SELECTOR, 'pre.console[data-node="0"]')
    assert "<script>window.pwned = 1</script>" in server_console.text
    assert browser.execute_script("return window.pwned === undefined")
    assert browser.find_elements(By.CSS_SELECTOR, "pre.console span.line.signal")
    shot(browser, "job-page")
    # the JUnit link downloads a valid file
    browser.find_element(By.ID, "download-junit").click()
    junit = wait_for(
        lambda: next(browser.downloads.glob("*junit*.xml"), None), 60, "the JUnit file"
    )
    suites = ET.fromstring(junit.read_bytes())
    assert suites.iter("testcase") and any(
        c.get("name") == "connected" for c in suites.iter("testcase")
    )


def test_every_page_readable_and_accessible(browser: Any, web: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    job_id, gate = submit(web, "pages")
    gate.touch()
    for name, path in [("jobs", "/jobs"), ("queue", "/queue"), ("job", f"/jobs/{job_id}"),
                       ("devices", "/devices"), ("login", "/login")]:  # fmt: skip
        browser.get(web["url"] + path)
        wait_el(browser, "main h1")
        assert browser.execute_script(A11Y_JS) == [], path
        shot(browser, name)
    # LAVA's URLs land on ours
    browser.get(f"{web['url']}/scheduler/job/{job_id}.1")
    assert browser.current_url.endswith(f"/jobs/{job_id}#node-1")
    browser.get(f"{web['url']}/scheduler/alldevices")
    assert browser.current_url.endswith("/devices")
    assert browser.find_elements(By.CSS_SELECTOR, "table.devices tbody tr")


def _log_in(browser: Any, web: dict[str, Any], user: str) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(f"{web['url']}/login")
    browser.find_element(By.ID, "username").send_keys(user)
    browser.find_element(By.ID, "token").send_keys(web["tokens"][user])
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_el(browser, "header .who", user)


def test_admin_actions_and_csrf(browser: Any, web: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    url = web["url"]
    # bob is no admin: no button, and a forged POST (with his cookies and a valid
    # CSRF token) is refused
    _log_in(browser, web, "bob")
    browser.get(f"{url}/devices")
    assert not browser.find_elements(By.CSS_SELECTOR, "button[id^=maint-]")
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    device = browser.find_element(By.CSS_SELECTOR, "table.devices tbody td").text

    def post(data: dict[str, str], with_cookies: dict[str, str]) -> int:
        req = urllib.request.Request(
            f"{url}/devices/{device}/maintenance",
            data=urllib.parse.urlencode(data).encode(),
            method="POST",
        )
        req.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in with_cookies.items()))
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert post({"csrf": cookies["lavamq_csrf"], "on": "1"}, cookies) == 403
    assert post({"csrf": "forged", "on": "1"}, cookies) == 403
    # an admin without the CSRF token is refused too; with the form it works
    _log_in(browser, web, "admin")
    admin_cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    assert post({"on": "1"}, admin_cookies) == 403
    browser.get(f"{url}/devices")
    browser.find_element(By.ID, f"maint-{device}").click()
    wait_el(browser, f"#device-{device}", "Maintenance")
    shot(browser, "devices-maintenance")
    browser.find_element(By.ID, f"maint-{device}").click()
    wait_el(browser, f"#device-{device}", "Good")
