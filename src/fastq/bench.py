"""``fastq bench``: throughput and latency, measured against a real Redis.

Scenarios (the performance issue's definitions):

- enqueue: N no-op ``.delay()`` calls, one at a time, from one producer;
- bulk:    N no-op tasks sent pipelined (``app.send_many``); also Redis bytes per queued message;
- drain:   N no-op tasks already queued, results ignored; a ``fastq worker`` subprocess with P
           processes drains them; time from the first fetch to the last ack (start-up apart);
- e2e:     N tasks that return their argument, sent in bulk, results collected with ResultSet
           while the worker runs (collecting overlaps the drain, as it did before 79b401f);
- latency: an idle worker, one producer: ``delay()`` then ``get()``, 2,000 times; p50/p99;
- producers: sends from 1 caller, 10-1,000 coroutines and 4-64 threads at once (``bench_producers``);
- memory and realistic: see their functions and ``bench_realistic``.

Without ``--broker`` a private, throwaway ``redis-server`` (from PATH) is started on a free
port, so the numbers do not depend on what else a shared Redis holds (``FASTQ_BROKER_URL`` is
not used: it often names a production Redis). With ``--broker`` every key the benchmark and its
workers write lies under a random ``fastq-bench-<hex>:`` prefix (its own queues, results,
registry and events), and only those keys are deleted afterwards: no FLUSHDB, no purge of
anything else. Every scenario runs that way, so none needs to clear a database.

Layer: apps; may import any layer.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import click
import psutil
import redis

from . import FastQ, ResultSet, __version__
from . import bench_producers as producers
from . import bench_realistic as realistic
from ._speedups import COMPILED
from .broker import safe_url
from .canvas import Signature
from .exceptions import BrokerError
from .exceptions import TimeoutError as ResultTimeout

#: The environment variable that hands the run's key prefix to its worker subprocesses.
PREFIX_ENV = "FASTQ_BENCH_KEY_PREFIX"
#: The app the benchmark's workers run (``fastq worker -A fastq.bench:app``).
app = FastQ("bench", key_prefix=os.environ.get(PREFIX_ENV) or "fastq-bench:")


@app.task(name="bench.noop", ignore_result=True)
def noop(*args):
    return None


@app.task(name="bench.echo")
def echo(x):
    return x


@app.task(name="bench.sleep")
def sleep_task(seconds: float) -> tuple[float, float]:
    """An I/O-bound task (the realistic scenario): waits; returns its (start, end) wall times."""
    t0 = time.time()
    time.sleep(seconds)
    return t0, time.time()


@app.task(name="bench.cpu")
def cpu_task(seconds: float) -> tuple[float, float]:
    """A CPU-bound task (the realistic scenario): spins for ``seconds`` of CPU time."""
    t0 = time.time()
    realistic.spin(seconds)
    return t0, time.time()


SCENARIOS = ("enqueue", "bulk", "drain", "e2e", "latency", "memory", "realistic", "producers")
DEFAULT_TASKS = {"enqueue": 20_000, "bulk": 100_000, "drain": 200_000, "e2e": 100_000, "latency": 2_000,
                 "memory": 1_000_000, "realistic": len(realistic.ROWS), "producers": producers.DEFAULT_TASKS}
#: Scenarios "all" runs (memory, realistic and producers take a while: ask for them by name).
DEFAULT_SCENARIOS = ("enqueue", "bulk", "drain", "e2e", "latency")


# --- Redis ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway redis-server on a free port; yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise click.ClickException(
            "no redis-server on PATH: install Redis (e.g. `apt-get install redis-server`) or pass --broker URL"
        )
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="fastq-bench-")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = FastQ("probe", broker=url, broker_connection_retries=0).broker.client
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise click.ClickException("the private redis-server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def private_cluster(masters: int) -> Iterator[str]:
    """A throwaway Redis Cluster of ``masters`` masters (no replicas) on free
    loopback ports, slots split evenly; yields its ``redis+cluster://`` URL."""

    exe = shutil.which("redis-server")
    if exe is None:
        raise click.ClickException("no redis-server on PATH: install Redis or pass --broker URL")
    tmp = tempfile.mkdtemp(prefix="fastq-bench-cluster-")
    ports = [_free_cluster_port() for _ in range(masters)]
    procs = [subprocess.Popen([exe, "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                               "--cluster-config-file", f"nodes-{p}.conf", "--save", "", "--appendonly", "no",
                               "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for p in ports]
    try:
        clients = [redis.Redis(port=p, socket_timeout=5) for p in ports]
        _wait(lambda: all(_pings(c) for c in clients), "the cluster's redis-servers to start")
        step = 16384 // masters
        for i, c in enumerate(clients):
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, 16383 if i == masters - 1 else (i + 1) * step - 1)
            if i:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0])
        _wait(lambda: all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO") and
                          len(c.execute_command("CLUSTER", "NODES").splitlines()) == masters for c in clients),
              "the cluster to form")
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = _free_port()
        if port + 10000 > 65535:
            continue
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", port + 10000))
            return port


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _wait(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise click.ClickException(f"timed out waiting for {what}")
        time.sleep(0.1)


def _check_broker(url: str) -> None:
    probe = FastQ("probe", broker=url, broker_connection_retries=0, broker_connection_timeout=2.0)
    try:
        with probe.broker.retrying():
            probe.broker.client.ping()
    except BrokerError as exc:
        raise click.ClickException(f"{exc}. Start Redis there, or omit --broker to use a private redis-server.")


# --- workers ----------------------------------------------------------------------


class _Worker:
    """A ``fastq worker`` subprocess running this module's app."""

    def __init__(self, url: str, prefix: str, processes: int, extra: list[str] | None = None,
                 pool: str = "process", name: str | None = None) -> None:
        env = {**os.environ, "FASTQ_BROKER_URL": url, PREFIX_ENV: prefix}
        env.pop("FASTQ_RESULT_BACKEND", None)  # results go to the benchmark's broker, under its prefix
        exe = os.path.join(os.path.dirname(sys.executable), "fastq")
        cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "fastq"]
        self.started = time.perf_counter()
        # Its output goes to a file, so that an early exit can be explained (check()).
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [*cmd, "worker", "-A", "fastq.bench:app", "-P", pool, "-c", str(processes), "--loglevel", "ERROR",
             *(["-n", name] if name else []), *(extra or [])],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def check(self) -> None:
        """Raise a one-line-plus-log error if the worker is gone."""
        code = self.proc.poll()
        if code is None:
            return
        self.log.seek(0)
        lines = [ln for ln in self.log.read().decode(errors="replace").splitlines() if ln.strip()]
        tail = "\n".join(f"  {ln}" for ln in lines[-10:]) or "  (it printed nothing)"
        raise click.ClickException(f"the benchmark worker exited early with code {code}; its last lines:\n{tail}")

    def rss_mb(self) -> float:

        try:
            p = psutil.Process(self.proc.pid)
            return sum(c.memory_info().rss for c in [p, *p.children()]) / 2**20
        except psutil.NoSuchProcess:
            return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _queue_backlog(bapp: FastQ) -> tuple[int, int]:
    """(entries in the default queue's streams, of which in flight)."""
    qk = bapp.broker.keys.queue("default")
    pipe = bapp.broker.client.pipeline(transaction=False)
    for key in qk.fetch_order:
        pipe.xlen(key)
    pipe.xpending(qk.streams[0], "fastq")
    *lengths, pending = pipe.execute(raise_on_error=False)  # no group until a worker starts
    return sum(x for x in lengths if isinstance(x, int)), pending["pending"] if isinstance(pending, dict) else 0


def _bulk_send(bapp: FastQ, n: int, task: str, progress) -> list:
    results = []
    step = 10_000
    for i in range(0, n, step):
        results.extend(bapp.send_many(Signature(task, (j,)) for j in range(i, min(n, i + step))))
        progress(min(step, n - i))
    return results


# --- scenarios --------------------------------------------------------------------


def run_enqueue(bapp: FastQ, n: int, progress) -> dict:
    task = bapp.tasks["bench.noop"]
    t0 = time.perf_counter()
    for i in range(n):
        task.delay(i)
        if i % 1000 == 999:
            progress(1000)
    dt = time.perf_counter() - t0
    bapp.broker.purge("default")
    return {"scenario": "enqueue", "tasks": n, "seconds": dt, "rate": n / dt}


def run_bulk(bapp: FastQ, n: int, progress) -> dict:
    bapp.broker.purge("default")
    mem0 = bapp.broker.client.info("memory")["used_memory"]
    t0 = time.perf_counter()
    _bulk_send(bapp, n, "bench.noop", progress)
    dt = time.perf_counter() - t0
    mem1 = bapp.broker.client.info("memory")["used_memory"]
    bapp.broker.purge("default")
    return {"scenario": "bulk", "tasks": n, "seconds": dt, "rate": n / dt, "bytes_per_message": (mem1 - mem0) / n}


def run_drain(bapp: FastQ, url: str, n: int, processes: int, progress, extra: list[str]) -> dict:
    bapp.broker.purge("default")
    _bulk_send(bapp, n, "bench.noop", lambda k: None)
    w = _Worker(url, bapp.conf.key_prefix, processes, extra)
    try:
        first = None
        done_before = 0
        while True:
            total, pending = _queue_backlog(bapp)
            now = time.perf_counter()
            if first is None and (total < n or pending > 0):
                first = now
            done = n - total
            progress(done - done_before)
            done_before = done
            if total == 0:
                end = now
                break
            w.check()
            time.sleep(0.002)
        rss = w.rss_mb()
    finally:
        w.stop()
    first = first or end
    return {"scenario": "drain", "processes": processes, "tasks": n, "seconds": end - first,
            "rate": n / max(end - first, 1e-9), "startup_s": first - w.started, "worker_rss_mb": rss}


def run_e2e(bapp: FastQ, url: str, n: int, processes: int, progress, extra: list[str]) -> dict:
    bapp.broker.purge("default")
    w = _Worker(url, bapp.conf.key_prefix, processes, extra)
    try:
        _wait_for_worker(bapp, w)
        t0 = time.perf_counter()
        results = _bulk_send(bapp, n, "bench.echo", lambda k: progress(k // 2))
        values = _collect(ResultSet(results, app=bapp), w)
        dt = time.perf_counter() - t0
        progress(n - n // 2)
        assert values[-1] == n - 1
        rss = w.rss_mb()
    finally:
        w.stop()
    return {"scenario": "e2e", "processes": processes, "tasks": n, "seconds": dt, "rate": n / dt, "worker_rss_mb": rss}


def _wait_for_worker(bapp: FastQ, w: _Worker) -> None:
    r = bapp.tasks["bench.echo"].delay(-1)
    deadline = time.monotonic() + 60
    while not r.ready():
        w.check()
        if time.monotonic() > deadline:
            raise click.ClickException("the benchmark worker did not run a task within 60s")
        time.sleep(0.01)
    r.forget()


def run_realistic(bapp: FastQ, url: str, row: tuple, extra: list[str]) -> dict:
    """One row of the realistic scenario (bench_realistic.py): its tasks, one
    ``delay()`` each, queued before the workers start or sent to running ones."""
    name, pool, concurrency, when, count = row
    kind, durations = realistic.WORKLOADS[name]
    task = bapp.tasks["bench.sleep" if kind == "sleep" else "bench.cpu"]
    names = [f"bench-realistic-{i}@{socket.gethostname()}" for i in range(count)]
    workers: list[_Worker] = []

    def start() -> None:
        workers.extend(_Worker(url, bapp.conf.key_prefix, concurrency, extra, pool=pool, name=n) for n in names)

    try:
        if when == "running":
            start()
            client, key = bapp.broker.client, bapp.broker.keys.workers
            deadline = time.monotonic() + 60
            while not all(client.zscore(key, n) is not None for n in names):
                for w in workers:
                    w.check()
                if time.monotonic() > deadline:
                    raise click.ClickException("the benchmark's workers did not register within 60s")
                time.sleep(0.05)
            _wait_for_worker(bapp, workers[0])
        sent, results = [], []
        for d in durations:
            sent.append(time.time())
            results.append(task.delay(d))
        if not workers:
            start()
        rs = ResultSet(results, app=bapp)
        while True:
            try:
                spans = [tuple(x) for x in rs.get(timeout=1.0)]
                break
            except ResultTimeout:
                for w in workers:
                    w.check()
    finally:
        for w in workers:
            w.stop()
    return realistic.summarize(row, sent, spans)


def _collect(results: ResultSet, w: _Worker, timeout: float = 600.0) -> list:
    """Every value, read while the worker still runs (as a producer waiting for its
    results does: collecting overlaps the drain), checking now and then that the
    worker is alive; results already read are kept between tries."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return results.get(timeout=min(2.0, max(deadline - time.monotonic(), 0.01)))
        except ResultTimeout:
            w.check()
            if time.monotonic() > deadline:
                raise


def _wait_until_drained(bapp: FastQ, w: _Worker) -> None:
    """Until the queue is empty (every message acked, so every result stored), or the worker is gone."""
    while _queue_backlog(bapp)[0]:
        w.check()
        time.sleep(0.01)


def run_latency(bapp: FastQ, url: str, n: int, progress, extra: list[str]) -> dict:
    w = _Worker(url, bapp.conf.key_prefix, 1, extra)
    try:
        _wait_for_worker(bapp, w)
        task = bapp.tasks["bench.echo"]
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            task.delay(i).get(timeout=30)
            samples.append(time.perf_counter() - t0)
            if i % 100 == 99:
                progress(100)
    finally:
        w.stop()
    samples.sort()

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))] * 1000

    return {"scenario": "latency", "samples": n, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": samples[-1] * 1000}


def run_memory(bapp: FastQ, url: str, n: int, progress, extra: list[str]) -> dict:
    """A one-process worker runs n tasks that return their argument (results
    stored), fed in waves; its RSS after the first tenth is compared with the end."""
    bapp.broker.purge("default")
    w = _Worker(url, bapp.conf.key_prefix, 1, extra)
    wave = 50_000
    samples = []
    try:
        _wait_for_worker(bapp, w)
        sent = 0
        while sent < n:
            k = min(wave, n - sent)
            results = _bulk_send(bapp, k, "bench.echo", lambda _: None)
            _wait_until_drained(bapp, w)
            ResultSet(results[-1:], app=bapp).get(timeout=600)
            sent += k
            progress(k)
            # Drop the stored results (this run's only): Redis memory is not what we measure here.
            bapp.broker.delete_prefixed(bapp.backend.keys.result(""))
            samples.append((sent, _child_rss_mb(w)))
    finally:
        w.stop()
    base = next((rss for done, rss in samples if done >= n // 10), samples[0][1])
    end = samples[-1][1]
    return {"scenario": "memory", "processes": 1, "tasks": n, "rss_after_10pct_mb": base, "rss_end_mb": end,
            "rss_growth_pct": (end - base) / base * 100}


def _child_rss_mb(w: _Worker) -> float:

    try:
        children = psutil.Process(w.proc.pid).children()
        return sum(c.memory_info().rss for c in children) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


# --- output -------------------------------------------------------------------------


def format_table(results: list[dict]) -> str:
    head = f"{'scenario':<10}{'procs':>6}{'tasks':>10}{'seconds':>10}{'tasks/s':>12}{'p50 ms':>9}{'p99 ms':>9}  other"
    lines = [head, "-" * len(head)]
    for r in results:
        other = []
        if "startup_s" in r:
            other.append(f"startup {r['startup_s']:.2f}s")
        if "worker_rss_mb" in r:
            other.append(f"worker RSS {r['worker_rss_mb']:.0f} MB")
        if "bytes_per_message" in r:
            other.append(f"Redis {r['bytes_per_message']:.0f} B/msg")
        if "rss_growth_pct" in r:
            other.append(f"child RSS {r['rss_after_10pct_mb']:.1f} -> {r['rss_end_mb']:.1f} MB "
                         f"({r['rss_growth_pct']:+.1f}%)")
        lines.append(
            f"{r['scenario']:<10}{r.get('processes', ''):>6}{r.get('tasks', r.get('samples', '')):>10}"
            f"{_f(r.get('seconds'), '.2f'):>10}{_f(r.get('rate'), ',.0f'):>12}"
            f"{_f(r.get('p50_ms'), '.3f'):>9}{_f(r.get('p99_ms'), '.3f'):>9}  {', '.join(other)}"
        )
    return "\n".join(lines)


def _f(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def run_producers(bapp: FastQ, rows: list[tuple], n: int, progress) -> list[dict]:
    """The producer shapes (``bench_producers``), each into an empty queue nobody drains."""
    out = []
    task = bapp.tasks["bench.noop"]
    for row in rows:
        bapp.broker.purge("default")
        gc.collect()
        if row[0] == "sustained":
            out.append(producers.run_sustained(task, row[1], producers.SUSTAINED_SECONDS))
        else:
            out.append(producers.run_row(task, row, n))
        progress(1)
    bapp.broker.purge("default")
    return out


def run(url: str, scenarios: list[str], tasks: int | None, processes: list[int], extra: list[str],
        show_progress: bool, rows: list[tuple] | None = None, producer_rows: list[tuple] | None = None) -> list[dict]:
    """Run the scenarios under a fresh ``fastq-bench-<hex>:`` key prefix, then delete its keys."""
    bapp = app
    bapp.conf.broker_url = url
    bapp.conf.result_backend = url
    bapp.conf.key_prefix = f"fastq-bench-{uuid.uuid4().hex[:12]}:"
    bapp._reset()
    try:
        return _run_scenarios(bapp, url, scenarios, tasks, processes, extra, show_progress, rows, producer_rows)
    finally:
        bapp.broker.delete_prefixed(bapp.conf.key_prefix)


def _run_scenarios(bapp: FastQ, url: str, scenarios: list[str], tasks: int | None, processes: list[int],
                   extra: list[str], show_progress: bool, rows: list[tuple] | None = None,
                   producer_rows: list[tuple] | None = None) -> list[dict]:
    results = []
    for sc in scenarios:
        n = tasks or DEFAULT_TASKS[sc]
        if sc == "producers":
            picked = producer_rows or producers.ROWS
            with click.progressbar(length=len(picked), label=f"{sc:<16}", file=sys.stderr,
                                   hidden=not show_progress) as bar:
                results.extend(run_producers(bapp, picked, n, bar.update))
            continue
        procs = processes if sc == "drain" else ([max(processes)] if sc == "e2e" else [1])
        if sc == "memory":
            procs = [1]
        for p in procs:
            label = f"{sc} ({p} proc)" if sc in ("drain", "e2e") else sc
            # Start each scenario with a clean heap: otherwise a full collection of what
            # the CLI imported or the last scenario left may land inside the timed part
            # (measured: bulk 8% slower when one did, with the same send code).
            gc.collect()
            with click.progressbar(length=n, label=f"{label:<16}", file=sys.stderr,
                                   hidden=not show_progress) as bar:
                if sc == "realistic":  # its rows, not n tasks
                    for row in (rows or realistic.ROWS)[:n]:
                        results.append(run_realistic(bapp, url, row, extra))
                        bar.update(1)
                elif sc == "enqueue":
                    results.append(run_enqueue(bapp, n, bar.update))
                elif sc == "bulk":
                    results.append(run_bulk(bapp, n, bar.update))
                elif sc == "drain":
                    results.append(run_drain(bapp, url, n, p, bar.update, extra))
                elif sc == "e2e":
                    results.append(run_e2e(bapp, url, n, p, bar.update, extra))
                elif sc == "memory":
                    results.append(run_memory(bapp, url, n, bar.update, extra))
                else:
                    results.append(run_latency(bapp, url, n, bar.update, extra))
    return results


@click.command("bench")
@click.option("--broker", help="Redis URL to measure (default: a private redis-server; FASTQ_BROKER_URL is not used). "
                               "The run uses only keys under a random fastq-bench-... prefix and deletes only those.")
@click.option("--tasks", "-n", type=click.IntRange(min=1), help="Tasks per scenario (default: per scenario).")
@click.option("--processes", "-p", default="1,2", show_default=True,
              help="Worker processes for drain (comma-separated); e2e uses the largest.")
@click.option("--scenario", "-s", type=click.Choice([*SCENARIOS, "all"]), multiple=True, default=["all"],
              show_default=True)
@click.option("--rows", help="realistic and producers: the rows to run, comma-separated: row numbers, or text "
                            "in a row's name (default: every row; realistic: -n runs the first N; producers: "
                            "'sustained' adds 1,000 coroutines sending for a minute, with memory).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--worker-arg", multiple=True, help="Extra argument for the benchmark's workers (repeatable).")
def bench_command(broker, tasks, processes, scenario, rows, as_json, worker_arg) -> None:
    """Measure enqueue, bulk, drain, end-to-end and latency against Redis."""
    try:
        procs = sorted({int(p) for p in processes.split(",")})
    except ValueError:
        raise click.BadParameter("give process counts like 1,2", param_hint="--processes") from None
    if not procs or min(procs) < 1:
        raise click.BadParameter("process counts must be >= 1", param_hint="--processes")
    scenarios = list(DEFAULT_SCENARIOS) if "all" in scenario else list(dict.fromkeys(scenario))
    try:
        picked = realistic.pick(rows) if rows and "realistic" in scenarios else None
        producer_rows = producers.pick(rows) if rows and "producers" in scenarios else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--rows") from None
    url = broker  # never FASTQ_BROKER_URL: that names the app's (often production) Redis
    with contextlib.ExitStack() as stack:
        if url:
            _check_broker(url)
        else:
            url = stack.enter_context(private_redis())
        results = run(url, scenarios, tasks, procs, list(worker_arg), show_progress=not as_json, rows=picked,
                      producer_rows=producer_rows)
    if as_json:
        click.echo(json.dumps({"tool": "fastq", "version": __version__, "compiled": COMPILED,
                               "broker": safe_url(url), "results": results}))
    else:
        core = "compiled" if COMPILED else "pure-Python"
        click.echo(f"fastq {__version__} ({core} core), broker {safe_url(url)}")
        plain = [r for r in results if r["scenario"] not in ("realistic", "producers")]
        if plain:
            click.echo(format_table(plain))
        rows = [r for r in results if r["scenario"] == "realistic"]
        if rows:
            click.echo("realistic: makespan against a work-conserving schedule of the same tasks on the same slots")
            click.echo(realistic.format_table(rows))
        sends = [r for r in results if r["scenario"] == "producers"]
        if sends:
            click.echo("producers: no-op sends from concurrent callers; p50/p99: each call's wait")
            click.echo(producers.format_table(sends))
