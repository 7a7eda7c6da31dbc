"""The live dashboard (``optimlab dashboard``) in a real browser, headless Chromium driven by selenium,
against stores that other processes write while the page is open: a made-up study written in stages
(every number known) and a real ``optimlab study run``."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from browser import CHROMEDRIVER, CHROMIUM, fetched, start_driver
from livewriter import ERROR, accuracies

from optimlab.cli import main
from optimlab.errors import OptimlabError
from optimlab.report.serve import make_server
from optimlab.study.store import StudyStore

pytest.importorskip("plotly")
HERE = Path(__file__).parent
STUDY = """name = "live"
dataset = "mnist-10k:0,1"
model = "mlp"
batch_size = 50
epochs = 12
validation = 0.1
optimizers = ["sgd", "adam"]
learning_rates = [0.01, 0.1]
seeds = [0]

[executor]
kind = "sequential"
"""


@contextmanager
def serving(db, **options):
    """A dashboard of ``db`` served from a thread of this process."""
    server = make_server(db, interval=options.pop("interval", 0.3), **options)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def until(check, timeout=20.0, every=0.05):
    """``check()`` once it is truthy (else fails after ``timeout`` seconds)."""
    deadline = time.time() + timeout
    while True:
        got = check()
        if got or time.time() > deadline:
            assert got, f"not within {timeout} s"
            return got
        time.sleep(every)


def api(url: str) -> dict:
    with urllib.request.urlopen(url + "api/state", timeout=10) as response:
        return json.loads(response.read())


def store_counts(db) -> dict:
    """Per status, the runs of the store (a run left running by a process that is gone: interrupted)."""
    store = StudyStore.open(db, readonly=True)
    try:
        runs, live = store.runs(), store.claimed_runs()
    finally:
        store.close()
    status = ["interrupted" if r["status"] == "running" and r["id"] not in live else r["status"]
              for r in runs]
    return {s: status.count(s) for s in STATUSES}


def runs_in(db) -> int:
    """How many runs the store holds (0 while there is no store yet, or it is being created)."""
    try:
        store = StudyStore.open(db, readonly=True)
    except OptimlabError:
        return 0
    try:
        return len(store.runs())
    finally:
        store.close()


def store_evals(db) -> dict[int, list[tuple]]:
    store = StudyStore.open(db, readonly=True)
    try:
        rows = store.conn.execute("SELECT run_id, step, test_accuracy FROM evals ORDER BY run_id, step")
        out = {}
        for run_id, step, accuracy in rows:
            out.setdefault(run_id, []).append((step, accuracy))
        return out
    finally:
        store.close()


STATUSES = ("completed", "diverged", "running", "interrupted", "pending", "failed")
PAGE_COUNTS = """return Object.fromEntries(['count-done', 'count-completed', 'count-diverged',
  'count-running', 'count-interrupted', 'count-pending', 'count-failed'].map(id => [id,
  Number(document.getElementById(id).textContent)]));"""
CURVE = """const t = document.getElementById('fig-metric').data.find(t => t.uid === arguments[0]);
return t ? [t.x, t.y, t.visible === undefined ? true : t.visible] : null;"""


def page_counts(driver) -> dict:
    counts = driver.execute_script(PAGE_COUNTS)
    return {k.removeprefix("count-"): v for k, v in counts.items()}


def renders(driver) -> int:
    """How many times the page drew a new state (the counts and tables; the figures once Plotly is
    loaded)."""
    return int(driver.execute_script("return Number(document.body.dataset.renders || 0)"))


def figures_drawn(driver) -> bool:
    return bool(driver.execute_script("return Number(document.body.dataset.drawn || 0)"))


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium and its driver are not installed (apt-get install chromium chromium-driver)")
    browser = start_driver(tmp_path_factory.mktemp("profile"))
    yield browser
    browser.quit()


def leave(driver, base: str) -> tuple[list, list]:
    """The page's console errors and the URLs it fetched from elsewhere than ``base``; then the page is
    left (before its server stops, which a page still polling would log)."""
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    outside = [u for u in fetched(driver) if not u.startswith(base)]
    driver.get("about:blank")
    return errors, outside


def test_the_page_follows_a_store_another_process_writes(driver, tmp_path):
    db, folder = tmp_path / "study.db", tmp_path / "stages"
    folder.mkdir()
    writer = subprocess.Popen([sys.executable, str(HERE / "livewriter.py"), str(db), str(folder)],
                              cwd=HERE, env={**os.environ, "PYTHONPATH": str(HERE)})
    try:
        until(lambda: (folder / "ready-0").exists() or writer.poll() is not None, timeout=60)
        assert writer.poll() is None, "the writer stopped before its first stage"
        with serving(db) as server:
            driver.get_log("browser"), fetched(driver)  # forget what earlier pages logged
            driver.get(server.url)
            until(lambda: figures_drawn(driver))
            driver.execute_script("window.__sameDocument = 'yes';")
            # stage 0, as the store says it: 1 completed, 1 diverged, 1 failed, 1 running, 4 pending
            expected = store_counts(db)
            assert expected == {"completed": 1, "diverged": 1, "running": 1, "interrupted": 0, "pending": 4,
                                "failed": 1}
            assert page_counts(driver) == {"done": 2, **expected}
            steps, values, _ = driver.execute_script(CURVE, "run-1-metric")
            assert list(zip(steps, values, strict=True)) == store_evals(db)[1] == list(zip(
                [0, 10], accuracies(1, 2), strict=True))
            text = driver.find_element("id", "progress").text
            assert "sgd" in text and "adam" in text and "2/4" in text  # sgd: run 2 done, run 3 diverged
            problems = driver.find_element("id", "problems").text
            assert ERROR.splitlines()[-1] in problems and "non-finite training loss at step 15" in problems
            assert str(writer.pid) in driver.find_element("id", "claims").text  # who holds run 1

            label = hover(driver, "run-1-metric", 1)  # the point of step 10
            assert "sgd" in label and "lr 0.01" in label and "seed 0" in label and "step 10" in label
            assert f"{accuracies(1, 2)[1]:.4g}" in label
            toggle(driver, "fig-metric", "sgd")
            hidden = ("return document.getElementById('fig-metric').data"
                      ".filter(t => t.legendgroup === 'sgd').every(t => t.visible === 'legendonly')")
            until(lambda: driver.execute_script(hidden), timeout=5)

            before = renders(driver)
            (folder / "go-1").touch()  # stage 1: run 1 finishes (steps 20, 30), run 5 starts
            until(lambda: page_counts(driver)["done"] == 3)
            assert driver.execute_script("return window.__sameDocument") == "yes"  # no reload
            assert renders(driver) > before
            steps, values, _ = driver.execute_script(CURVE, "run-1-metric")
            assert list(zip(steps, values, strict=True)) == store_evals(db)[1]
            assert steps == [0, 10, 20, 30] and values == accuracies(1)
            assert driver.execute_script(hidden), "the optimizer hidden by a legend click came back"
            assert writer.wait(timeout=30) == 0
            # its claim of run 5 left behind: dead, the run interrupted
            until(lambda: page_counts(driver)["interrupted"] == 1)
            assert page_counts(driver) == {"done": 3, **store_counts(db)}
            until(lambda: "dead" in driver.find_element("id", "claims").text)
            assert leave(driver, server.url) == ([], [])
    finally:
        writer.kill()
        writer.wait()


def hover(driver, uid: str, point: int) -> str:
    """Move the mouse onto a point of a curve of the learning-curve figure; the hover label's text."""
    from selenium.webdriver.common.action_chains import ActionChains

    x, y = driver.execute_script("""
const gd = document.getElementById('fig-metric');
gd.scrollIntoView();
const t = gd.data.find(t => t.uid === arguments[0]), i = arguments[1];
const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
return [box.left + xa._offset + xa.l2p(t.x[i]), box.top + ya._offset + ya.l2p(t.y[i])];""", uid, point)
    actions = ActionChains(driver)
    actions.w3c_actions.pointer_action.move_to_location(int(round(x)), int(round(y)))
    actions.perform()
    return until(lambda: driver.execute_script(
        "return document.querySelector('#fig-metric .hoverlayer').textContent"), timeout=5)


def toggle(driver, figure: str, name: str) -> None:
    """Click an entry of a figure's legend."""
    from selenium.webdriver.common.action_chains import ActionChains

    entry = driver.execute_script(f"""
return [...document.querySelectorAll('#{figure} .legend .traces')]
  .find(t => t.textContent === arguments[0]).querySelector('.legendtoggle');""", name)
    ActionChains(driver).move_to_element(entry).click().perform()


def drawn(driver) -> int:
    """How many evaluations the learning-curve figure draws."""
    return driver.execute_script(
        "return (document.getElementById('fig-metric').data || []).reduce((n, t) => n + t.x.length, 0)")


def test_two_dashboards_follow_a_running_study_without_disturbing_it(driver, tmp_path):
    (tmp_path / "live.toml").write_text(STUDY)
    study = subprocess.Popen([sys.executable, "-m", "optimlab", "study", "run", "live.toml", "--out", "out",
                              "--threads", "1", "-q"], cwd=tmp_path,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    db = tmp_path / "out" / "study.db"
    try:
        until(lambda: runs_in(db) == 4, timeout=60, every=0.2)  # created; it trains next
        with serving(db, interval=0.5) as server, serving(db, interval=0.5) as second:
            assert second.server_address[1] != server.server_address[1]
            driver.get_log("browser"), fetched(driver)
            driver.get(server.url)
            until(lambda: renders(driver) >= 1)
            driver.execute_script("window.__sameDocument = 'yes';")
            first = page_counts(driver)
            assert first["done"] < 4  # loaded while the study ran
            seen, points, apart = [first["done"]], [drawn(driver)], []  # at each look
            while study.poll() is None:
                seen.append(page_counts(driver)["done"])
                points.append(drawn(driver))
                apart.append(api(second.url)["done"])  # the other dashboard, meanwhile
                time.sleep(0.2)
            assert study.wait() == 0, study.stderr.read()
            until(lambda: page_counts(driver)["done"] == 4)
            assert driver.execute_script("return window.__sameDocument") == "yes"  # updated in place
            assert seen == sorted(seen) and len(set(seen)) >= 2  # the count rose as runs finished
            assert points == sorted(points) and len(set(points)) >= 2  # the curves grew as rows landed
            assert apart == sorted(apart)
            evals = store_evals(db)
            until(lambda: drawn(driver) == sum(map(len, evals.values())))
            assert page_counts(driver) == {"done": 4, **store_counts(db)}
            assert store_counts(db)["completed"] == 4  # the study ran to its end as without dashboards
            state = api(second.url)
            assert state["totals"] == store_counts(db) and state["done"] == 4
            curves = state["tasks"][0]["curves"]
            assert [len(c["step"]) for c in curves] == [len(evals[i]) for i in sorted(evals)]
            assert leave(driver, server.url) == ([], [])
    finally:
        study.kill()
        study.wait()


@pytest.mark.parametrize("stop, ignored_at_start", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_the_command_prints_its_address_and_stops_on_ctrl_c(made_up_store, stop, ignored_at_start):
    """The command itself, in a process of its own: a free port of its choosing, its URL printed,
    the page and the state served, Ctrl-C (even in a process started with SIGINT ignored, where
    Python installs no handler) or SIGTERM a clean stop."""
    def start() -> None:
        if ignored_at_start:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    command = subprocess.Popen([sys.executable, "-m", "optimlab", "dashboard", str(made_up_store.parent)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=start)
    try:
        line = command.stdout.readline()
        assert line.startswith("dashboard of made-up: http://127.0.0.1:") and "Ctrl-C" in line, \
            line + command.stderr.read()
        url = line.split(": ", 1)[1].split()[0]
        assert api(url)["totals"] == store_counts(made_up_store)
        with urllib.request.urlopen(url + "plotly.min.js", timeout=10) as response:
            assert len(response.read()) > 1_000_000  # Plotly itself, from the installed package
        command.send_signal(stop)
        _, err = command.communicate(timeout=60)  # (reading the pipes while it stops)
        assert command.returncode == 0 and err.strip().endswith("dashboard stopped"), err
        assert "Traceback" not in err, err
    finally:
        command.kill()
        command.wait()


def test_bad_input_is_one_message_and_nothing_is_written(tmp_path, made_up_store, capsys):
    before = sorted(p.name for p in tmp_path.iterdir())

    def refused(*args) -> str:
        assert main(["dashboard", *map(str, args)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("optimlab: error: ") and "Traceback" not in err and err.count("\n") == 1, err
        return err

    assert "no such study store" in refused(tmp_path / "missing.db")
    (tmp_path / "notes.txt").write_text("not a database")
    assert "is not a study store" in refused(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    assert "a folder without a study store" in refused(tmp_path / "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "notes.txt", "empty"])
    assert not list((tmp_path / "empty").iterdir())
    err = refused(made_up_store, "--host", "0.0.0.0")
    assert "not a loopback address" in err and "--allow-remote" in err and "no login" in err
    assert "--interval must be a number of seconds > 0" in refused(made_up_store, "--interval", "0")
    assert "--interval must be" in refused(made_up_store, "--interval", "nan")
    assert "--port must be an integer in 1..65535" in refused(made_up_store, "--port", "70000")
    with serving(made_up_store) as taken:  # a port in use: refused when asked for, avoided when chosen
        port = taken.server_address[1]
        assert f"port {port} on 127.0.0.1 is in use" in refused(made_up_store, "--port", port)
        with serving(made_up_store, host="localhost") as other:
            assert other.server_address[1] != port
            assert api(other.url)["totals"] == api(taken.url)["totals"] == store_counts(made_up_store)


def test_only_loopback_names_are_answered_unless_remote_is_allowed(made_up_store):
    with serving(made_up_store) as server:
        port = server.server_address[1]
        rebound = urllib.request.Request(server.url, headers={"Host": f"attacker.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=10)
        assert refused.value.code == 403  # a DNS name rebound to this machine reads nothing
    with serving(made_up_store, host="0.0.0.0", allow_remote=True) as server:  # told: served there
        port = server.server_address[1]
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        assert "<title>Study made-up</title>" in page and "plotly.min.js" in page
        assert api(f"http://127.0.0.1:{port}/")["runs"] == 30


def test_the_state_holds_the_stores_numbers(made_up_store):
    from optimlab.report.live import study_state

    state = study_state(made_up_store)
    assert state["runs"] == 30 and state["totals"]["completed"] == 27 and state["totals"]["diverged"] == 3
    [task] = state["tasks"]
    sgd = next(s for s in task["sensitivity"] if s["optimizer"] == "sgd")
    at = {p["lr"]: p for p in sgd["points"]}
    assert at[1e-2]["mean"] == pytest.approx(0.90) and at[1e-2]["std"] == pytest.approx(0.01)
    assert at[1.0]["mean"] is None and at[1.0]["diverged"] == 3
    assert {p["status"] for p in state["problems"]} == {"diverged"}
    json.dumps(state, allow_nan=False)



def test_the_report_draws_the_same_figures_offline(driver, made_up_store, tmp_path):
    from optimlab.report import make_report

    report = make_report(made_up_store, tmp_path / "r")
    driver.get_log("browser"), fetched(driver)
    driver.get(report.html.as_uri())
    until(lambda: figures_drawn(driver))
    evals = store_evals(made_up_store)
    assert drawn(driver) == sum(map(len, evals.values()))  # every evaluation of every run
    steps, values, _ = driver.execute_script(CURVE, "run-1-metric")
    assert list(zip(steps, values, strict=True)) == evals[1]
    sgd = driver.execute_script("""const t = document.getElementById('fig-sensitivity').data
      .find(t => t.uid === 'sens-sgd'); return [t.x, t.y];""")
    assert dict(zip(*sgd, strict=True)) == pytest.approx({1e-4: 0.5, 1e-3: 0.892, 1e-2: 0.90, 1e-1: 0.895})
    assert "sgd" in hover(driver, "run-1-metric", 3)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [] and fetched(driver) == []  # nothing fetched: Plotly is in the page
    driver.get("about:blank")
