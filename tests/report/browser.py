"""Opening a report page in headless Chromium, as a reader would: every image decoded, no errors."""

import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="Chromium is not installed (apt-get install chromium)")
# the probe: console errors and uncaught exceptions counted from the first line of <head>, images
# counted once the page has loaded; the verdict goes into the title, which --dump-dom shows
HOOK = """<head><script>
window.__errors = 0;
window.addEventListener('error', () => { window.__errors += 1; }, true);
const __consoleError = console.error;
console.error = (...a) => { window.__errors += 1; __consoleError(...a); };
</script>"""
CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.title = 'IMAGES ' + ok + '/' + imgs.length + ' ERRORS ' + window.__errors;
});
</script></body>"""


def outside_scripts(page: str) -> str:
    """A page's text without its inline scripts (a report inlines Plotly, whose code holds link and
    image literals of its own that the page never fetches)."""
    return re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.S)


def open_in_browser(page, tmp_path) -> tuple[str, list[str]]:
    """The page's verdict, ``IMAGES <decoded>/<all> ERRORS <count>``, and the browser's console
    lines."""
    probe = tmp_path / "probe.html"  # the report, with a script that counts the decoded images
    probe.write_text(page.read_text().replace("<head>", HOOK, 1).replace("</body>", CHECK))
    run = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", run.stdout)
    return (title.group(1) if title else run.stderr[-2000:]), [
        line for line in run.stderr.splitlines() if "CONSOLE" in line]


# driving a page (clicks, hovers, a page that changes): selenium with Debian's chromium-driver
CHROMEDRIVER = shutil.which("chromedriver")


def start_driver(profile):
    """Headless Chromium under selenium, keeping the page's console and network log; nothing
    downloaded (the driver is Debian's, the browser the system's)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.page_load_strategy = "eager"  # the document, not every script it loads after
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1400",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def fetched(driver) -> list[str]:
    """Every URL the page asked the network for since the last call (http, https, ws, wss)."""
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if url.split(":", 1)[0] in ("http", "https", "ws", "wss"):
                urls.append(url)
    return urls
