"""`fastq dashboard`: its JSON API, auth and CSRF, and the page in a real headless
Chromium (Debian's `chromium`, driven by Playwright; no browser is downloaded).

Set FASTQ_SCREENSHOTS_DIR=docs to refresh the screenshots in docs/.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, fastq_command, free_port, wait_for

if not os.environ.get("CI"):  # in CI a missing dependency must fail, not skip
    pytest.importorskip("starlette", reason="pip install 'fastq[dashboard]'")
    pytest.importorskip("uvicorn", reason="pip install 'fastq[dashboard]'")

APP = "tests.apps.monitoring:app"
AUTH = ("admin", "s3cret pass")
CHROMIUM = os.environ.get("FASTQ_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Dashboard:
    def __init__(self, base: str, proc: subprocess.Popen, log_path: Path) -> None:
        self.base = base
        self.proc = proc
        self.log_path = log_path

    def request(self, path: str, method: str = "GET", body: dict | None = None, auth=AUTH,
                headers: dict | None = None) -> tuple[int, bytes, dict]:
        h = dict(headers or {})
        if auth:
            h["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def json(self, path: str, **kw):
        status, body, _ = self.request(path, **kw)
        assert status == 200, (path, status, body)
        return json.loads(body)


@pytest.fixture
def mon(redis_url):
    from tests.apps import monitoring

    monitoring.app.conf.broker_url = redis_url
    monitoring.app._reset()
    return monitoring.app


def start_dashboard(redis_url: str, *args: str) -> Dashboard:
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="fastq-dashboard-", suffix=".log")[1])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*fastq_command(), "-A", APP, "dashboard", "--port", str(port), *args],
            cwd=ROOT, env={**os.environ, "FASTQ_BROKER_URL": redis_url}, stdout=log, stderr=subprocess.STDOUT,
        )
    d = Dashboard(f"http://127.0.0.1:{port}", proc, log_path)

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"dashboard exited: {log_path.read_text()}")
        try:
            return d.request("/healthcheck")[0] == 200
        except OSError:
            return False

    wait_for(up, 30, 0.1, message="the dashboard")
    return d


def stop_dashboard(d: Dashboard) -> None:
    d.proc.terminate()
    try:
        d.proc.wait(10)
    except subprocess.TimeoutExpired:
        d.proc.kill()


@pytest.fixture
def dashboard(redis_url):
    d = start_dashboard(redis_url, "--basic-auth", ":".join(AUTH))
    yield d
    stop_dashboard(d)


@pytest.mark.parametrize("auth", [None, AUTH])
def test_only_the_dashboards_own_host_names_are_answered(mon, redis_url, auth):
    # Given a dashboard on 127.0.0.1 (with or without basic auth) and one more name allowed
    args = ["--allow-host", "dash.example"] + (["--basic-auth", ":".join(auth)] if auth else [])
    d = start_dashboard(redis_url, *args)
    try:
        port = d.base.rsplit(":", 1)[1]
        r = mon.tasks["mon.add"].delay(1, 2)
        # When a page of another site reaches it (DNS rebinding: its name now points here)
        evil = {"Host": f"evil.example:{port}"}
        # Then nothing is answered: no CSRF token, no task arguments, no retry
        for path, method in (("/api/csrf", "GET"), (f"/api/tasks/{r.id}", "GET"), ("/", "GET"),
                             (f"/api/tasks/{r.id}/retry", "POST")):
            status, body, _ = d.request(path, method=method, auth=auth, headers=evil)
            assert status == 421 and b"token" not in body, (path, status, body)
        assert d.request("/api/csrf", auth=auth, headers={})[0] == 200  # urllib sends Host: 127.0.0.1:port
        # And its own names are: localhost, the bind address, IPv6 loopback and --allow-host
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "DASH.example", f"dash.example:{port}"):
            status, body, _ = d.request("/api/csrf", auth=auth, headers={"Host": host})
            assert status == 200 and b"token" in body, (host, status)
    finally:
        stop_dashboard(d)


def test_api_auth_and_csrf(mon, worker, dashboard):
    d = dashboard
    # Every page and API call needs the credentials
    for path in ("/", "/api/workers", "/static/app.js", "/metrics", "/api/tasks"):
        status, _, headers = d.request(path, auth=None)
        assert status == 401 and "Basic" in headers.get("www-authenticate", headers.get("WWW-Authenticate", ""))
        assert d.request(path, auth=("admin", "wrong"))[0] == 401
    status, body, headers = d.request("/")
    assert status == 200 and b'name="csrf-token"' in body
    assert "default-src 'self'" in headers.get("content-security-policy", headers.get("Content-Security-Policy", ""))
    # Given a worker and a finished task
    w = worker("-P", "thread", "-c", "1", app=APP)
    r = mon.tasks["mon.add"].delay(20, 22)
    assert r.get(timeout=30) == 42
    workers = wait_for(lambda: [x for x in d.json("/api/workers") if x["hostname"] == w.name and x["online"]], 30, 0.2,
                       message="the worker in /api/workers")
    assert workers[0]["pool"] == "thread" and workers[0]["concurrency"] == 1
    tasks = wait_for(lambda: d.json(f"/api/tasks?search={r.id}")["tasks"], 30, 0.2, message="the task in /api/tasks")
    assert tasks[0]["state"] == "SUCCESS" and tasks[0]["name"] == "mon.add"
    detail = d.json(f"/api/tasks/{r.id}")
    assert (detail["state"], detail["result"], detail["args"], detail["hostname"]) == ("SUCCESS", 42, [20, 22], w.name)
    # A POST without the CSRF token, or from another origin, is refused
    assert d.request(f"/api/workers/{w.name}/pool_grow", method="POST", body={"n": 1})[0] == 403
    token = d.json("/api/csrf")["token"]
    bad_origin = {"X-CSRF-Token": token, "Origin": "http://evil.example"}
    assert d.request(f"/api/workers/{w.name}/pool_grow", method="POST", body={"n": 1}, headers=bad_origin)[0] == 403
    # With it, the action reaches the worker
    status, body, _ = d.request(f"/api/workers/{w.name}/pool_grow", method="POST", body={"n": 1},
                                headers={"X-CSRF-Token": token})
    assert status == 200 and json.loads(body)["reply"] == {"ok": "pool will grow to 2"}
    # GET cannot change anything
    assert d.request(f"/api/workers/{w.name}/pool_grow")[0] == 405
    # Retry sends the task again under a new id
    status, body, _ = d.request(f"/api/tasks/{r.id}/retry", method="POST", headers={"X-CSRF-Token": token})
    new_id = json.loads(body)["task_id"]
    assert status == 200 and new_id != r.id and mon.AsyncResult(new_id).get(timeout=30) == 42
    # The dashboard's /metrics counts every worker's tasks
    text = wait_for(lambda: (lambda t: t if 'fastq_tasks_total{state="succeeded",task="mon.add"} 2.0' in t else None)(
        d.request("/metrics")[1].decode()), 30, 0.3, message="dashboard metrics")
    assert 'fastq_queue_length{queue="default"}' in text and "fastq_workers_online 1.0" in text
    # Queues and chart series
    q = {row["queue"]: row for row in d.json("/api/queues")}
    assert q["default"]["waiting"] == 0 and "rate_out" in q["default"]
    stats = d.json("/api/stats?minutes=1")
    assert len(stats["tasks"]) == 60 and sum(row[1] for row in stats["tasks"]) >= 2


@pytest.fixture
def browser():
    if not os.environ.get("CI"):
        pytest.importorskip("playwright", reason="pip install playwright (the browser is Debian's chromium)")
        if not shutil.which(CHROMIUM):
            pytest.skip("no chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_dashboard_in_a_browser(mon, worker, dashboard, browser, tmp_path, ledger):
    shots = Path(os.environ.get("FASTQ_SCREENSHOTS_DIR") or tmp_path)
    if not shots.is_absolute():
        shots = ROOT / shots
    context = browser.new_context(http_credentials={"username": AUTH[0], "password": AUTH[1]},
                                  viewport={"width": 1360, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda dialog: dialog.accept())
    page.set_default_timeout(30_000)

    # The worker appears on the front page
    page.goto(dashboard.base + "/")
    w = worker("-P", "thread", "-c", "1", app=APP)
    page.wait_for_selector(f'#workers-table tr[data-host="{w.name}"] .badge.online')

    # Finished tasks appear in the task list, with filters
    ok = mon.tasks["mon.add"].delay(20, 22)
    bad = mon.tasks["mon.fail"].delay("disk full", path="/var")
    for _ in range(30):
        mon.tasks["mon.add"].delay(1, 2)
    assert ok.get(timeout=30) == 42
    bad.get(timeout=30, propagate=False)
    page.click('header nav a[data-nav="tasks"]')
    page.wait_for_selector(f'#tasks-table tr[data-task-id="{ok.id}"] .badge.SUCCESS')
    page.select_option("#filter-state", "FAILURE")
    page.wait_for_selector(f'#tasks-table tr[data-task-id="{bad.id}"]')
    wait_for(lambda: page.locator("#tasks-table tr[data-task-id]").count() == 1, 30, 0.2, message="filtered list")
    page.select_option("#filter-state", "")
    page.wait_for_selector(f'#tasks-table tr[data-task-id="{ok.id}"]')
    page.screenshot(path=str(shots / "dashboard-tasks.png"))

    # A task's detail page: arguments, result, worker
    page.click(f'#tasks-table tr[data-task-id="{ok.id}"] a')
    page.wait_for_selector("#task-state")
    assert page.text_content("#task-state") == "SUCCESS"
    assert "[\n  20,\n  22\n]" in page.text_content("#task-args")
    assert page.text_content("#task-result") == "42"
    assert w.name in page.text_content("#task-detail")
    # A failed one shows its exception and traceback
    page.goto(f"{dashboard.base}/tasks/{bad.id}")
    page.wait_for_selector("#task-traceback")
    assert "ValueError: disk full" in page.text_content("#task-exception")
    assert "raise ValueError(message)" in page.text_content("#task-traceback")
    assert "'/var'" not in page.text_content("#task-args") and '"/var"' in page.text_content("#task-args")
    page.screenshot(path=str(shots / "dashboard-task-failed.png"), full_page=True)

    # A task reporting progress: PROGRESS in the list, its meta on its page
    prog = mon.tasks["mon.progress"].delay("go-browser")
    page.goto(dashboard.base + "/tasks")
    page.wait_for_selector(f'#tasks-table tr[data-task-id="{prog.id}"] .badge.PROGRESS')
    page.goto(f"{dashboard.base}/tasks/{prog.id}")
    assert json.loads(page.text_content("#task-meta")) == {"done": 3, "total": 10}
    ledger.set("go-browser", 1)
    assert prog.get(timeout=30) == "finished"

    # Revoke a queued task: sent to a queue no worker consumes yet, found by its id
    queued = mon.tasks["mon.add"].apply_async((3, 4), queue="later")
    page.goto(dashboard.base + "/tasks")
    page.fill("#filter-search", queued.id)
    page.press("#filter-search", "Enter")
    page.wait_for_selector("#task-state")
    assert page.text_content("#task-state") == "PENDING"
    assert "waiting in later" in page.text_content("#task-detail")
    page.click("#revoke-btn")
    page.wait_for_selector("#revoked-flag")
    # When a worker takes the queue, it does not run it
    mon.control.add_consumer("later", destination=[w.name], reply=True, timeout=5)
    queued.get(timeout=30, propagate=False)
    assert queued.state == "REVOKED"
    page.wait_for_selector("#task-state:text-is('REVOKED')")  # the page refreshes itself

    # Workers: grow the pool with the button
    page.click('header nav a[data-nav="workers"]')
    row = f'#workers-table tr[data-host="{w.name}"]'
    page.click(f'{row} button[data-action="pool_grow"]')
    page.wait_for_selector("#toast:has-text('pool will grow to 2')")
    wait_for(lambda: page.text_content(f"{row} td:nth-child(4)") == "2", 30, 0.3, message="concurrency 2")
    page.screenshot(path=str(shots / "dashboard-workers.png"))

    # Queues and the dead-letter view, with requeue
    dead = mon.tasks["mon.reject"].delay()
    dead.get(timeout=30, propagate=False)
    page.click('header nav a[data-nav="queues"]')
    page.wait_for_selector('#queues-table tr[data-queue="default"] a')
    page.screenshot(path=str(shots / "dashboard-queues.png"))
    page.click('#queues-table tr[data-queue="default"] a')
    page.wait_for_selector("#dlq-table tr[data-dead-id]")
    assert "mon.reject" in page.text_content("#dlq-table")
    page.screenshot(path=str(shots / "dashboard-dead-letters.png"))
    page.click("#requeue-all")
    page.wait_for_selector("#toast:has-text('requeued 1 message(s)')")

    # The front page with its charts
    page.goto(dashboard.base + "/")
    page.wait_for_selector("#chart-tasks")
    wait_for(lambda: int(page.text_content("#card-succeeded .value")) >= 31, 30, 0.3, message="succeeded count")
    page.wait_for_timeout(2500)  # one more sample for the queue chart
    page.screenshot(path=str(shots / "dashboard-overview.png"))
    assert errors == []
    context.close()


def test_task_list_shows_dead_lettered_tasks(mon, worker, dashboard, r):
    d = dashboard
    # Given a task dead-lettered by the reaper after its worker was lost (no event says so)
    lost = worker("-P", "solo", "--lease-timeout", "1", "--max-deliveries", "1", app=APP)
    held = mon.tasks["mon.sleep"].delay(600)
    wait_for(lambda: r.xpending("fastq:{default}:s", "fastq")["pending"] == 1, 30, message="the task to be held")
    lost.kill_all()
    worker("-P", "solo", "--lease-timeout", "1", "--max-deliveries", "1", app=APP)
    wait_for(lambda: r.xlen("fastq:{default}:dlq") == 1, 60, 0.2, message="the dead letter")
    # When the task list is asked for, all or only DEAD ones
    # Then it is listed as DEAD, with the reason
    for query in (f"/api/tasks?search={held.id}", "/api/tasks?state=DEAD"):
        tasks = d.json(query)["tasks"]
        assert [(t["id"], t["state"], t["name"], t["reason"]) for t in tasks] == \
            [(held.id, "DEAD", "mon.sleep", "max_deliveries")], tasks


def _dashboard_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*fastq_command(), "-A", APP, "dashboard", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_port_in_use_is_a_one_line_error_without_the_banner(redis_url):
    import socket

    # Given a port something else listens on
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        # When the dashboard is started on it
        out = _dashboard_cli("--port", str(port))
    # Then it exits non-zero with one line, and never said it was serving
    assert out.returncode == 1, out.stderr
    text = out.stdout + out.stderr
    assert "fastq dashboard on" not in text and "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], text


def test_public_address_without_basic_auth_warns(redis_url):
    # Given / When the dashboard listens on every interface without --basic-auth
    port = free_port()
    proc = subprocess.Popen([*fastq_command(), "-A", APP, "dashboard", "--address", "0.0.0.0", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    d = Dashboard(f"http://127.0.0.1:{port}", proc, Path(os.devnull))

    def up():
        assert proc.poll() is None, "the dashboard exited"
        try:
            return d.request("/healthcheck", auth=None)[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, 30, 0.1, message="the dashboard")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    # Then it warns that anyone who reaches the port can act on tasks (as Flower does), and runs
    assert "without --basic-auth" in err and "0.0.0.0" in err, err
    assert f"fastq dashboard on http://0.0.0.0:{port}/" in err, err
    # And with --basic-auth it does not warn (a port in use makes it exit at once)
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen(1)
        with_auth = _dashboard_cli("--address", "0.0.0.0", "--port", str(s.getsockname()[1]), "--basic-auth", "a:b")
    assert with_auth.returncode == 1 and "without --basic-auth" not in with_auth.stderr, with_auth.stderr
