"""Side-by-side benchmark: fastq vs Celery vs Dramatiq, same scenarios, same Redis, same run.

Usage::

    python benchmarks/compare.py                    # full run, best of 2 (~11 min on 2 cores)
    python benchmarks/compare.py --quick            # small N, a couple of minutes
    python benchmarks/compare.py --write-results    # also write benchmarks/RESULTS.md
    python benchmarks/compare.py --tasks drain=50000,celery:e2e=5000 --repeat 3
    python benchmarks/compare.py --scenario realistic --rows "sleep 100ms" --repeat 1
    python benchmarks/compare.py --scenario producers    # + arq and taskiq

What it does:

1. Makes sure the peers' virtual environment exists (benchmarks/.peers/venv, git-ignored):
   ``python -m venv`` + ``pip install -r benchmarks/peers/requirements.txt`` (Celery with
   its Redis extra, Dramatiq with its Redis extra, hiredis). It is rebuilt only when the
   requirements file changes. Peer code is installed from PyPI, never vendored.
2. For each scenario, runs each system's benchmark as a subprocess, one after the other
   (so the three see the same machine conditions as far as possible):
   - fastq:    ``python -m fastq bench ... --json`` with this interpreter;
   - Celery:   ``benchmarks/peers/celery_bench.py`` with the venv's interpreter;
   - Dramatiq: ``benchmarks/peers/dramatiq_bench.py`` with the venv's interpreter.
   All three print the same JSON shape; each starts its workers as subprocesses of its
   own interpreter, the way users start them.
3. Prints one table: absolute figures, N per cell, and fastq's ratio to each peer.

The realistic scenario (``fastq bench -s realistic``: sleeping and CPU-spinning tasks of 1 ms
to 5 s on thread and process pools, queued before the workers start or sent to running ones)
is opt-in: ``--scenario realistic``, optionally ``--rows`` to pick rows. Its rows, workloads
and arithmetic come from src/fastq/bench_realistic.py, which every side loads (the peers by
path). It runs row by row, each system right after the other (fastq through
``fastq bench -s realistic --rows K``), and
prints its own table: makespan against the ideal schedule and wait p99 per system, fastq's
ratio to each peer and who is ahead.

The producers scenario (``fastq bench -s producers``: no-op sends from 1 caller, 10-1,000
coroutines of one event loop and 4-64 threads at once) is opt-in too: ``--scenario
producers``. Its shapes and figures come from src/fastq/bench_producers.py, which the peers'
runner (benchmarks/peers/producers_bench.py) loads by path; besides Celery and Dramatiq
(sync sends: 1 caller and threads) it runs arq and taskiq (async sends: the asyncio rows),
each only in the shapes it has an API for. Its table: tasks/s and each call's p50 wait.

The Redis DB in --broker (default DB 5 of 127.0.0.1:6379) is FLUSHED before every run:
point it at a DB that holds nothing you need.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS_DIR = HERE / "peers"
VENV = HERE / ".peers" / "venv"
VENV_PY = VENV / "bin" / "python"
REQUIREMENTS = PEERS_DIR / "requirements.txt"
RESULTS_MD = HERE / "RESULTS.md"

SYSTEMS = ("fastq", "celery", "dramatiq")
#: Peers with an asyncio send API only: measured in the producers scenario.
ASYNC_PEERS = ("arq", "taskiq")
SCENARIOS = ("enqueue", "bulk", "drain", "e2e", "latency")
#: Opt-in scenarios: not in the default run (realistic alone takes about as long as it).
EXTRA_SCENARIOS = ("realistic", "producers")
#: The producers scenario's shapes and figures (standard library only).
PRODUCERS_PATH = REPO / "src" / "fastq" / "bench_producers.py"
RESULTS_PRODUCERS_MD = HERE / "RESULTS-producers.md"
#: The realistic scenario's workloads, rows and arithmetic (standard library only).
REALISTIC_PATH = REPO / "src" / "fastq" / "bench_realistic.py"
RESULTS_REALISTIC_MD = HERE / "RESULTS-realistic.md"
DRAIN_PROCESSES = (1, 2)
E2E_PROCESSES = 2
#: Seconds one system may take for one scenario before it is reported as failed.
RUN_TIMEOUT = 900

#: N per (system, scenario). fastq uses the issue's N everywhere; the peers use the same
#: N where they finish in reasonable time and a smaller N for drain and e2e, where they
#: are one to two orders of magnitude slower (the table prints N in every cell). Chosen
#: so the whole default run stays near 15 minutes on the 2-core benchmark machine.
FULL_TASKS = {
    "fastq": {"enqueue": 20_000, "bulk": 100_000, "drain": 200_000, "e2e": 100_000, "latency": 2_000},
    "celery": {"enqueue": 20_000, "bulk": 100_000, "drain": 20_000, "e2e": 10_000, "latency": 2_000},
    "dramatiq": {"enqueue": 20_000, "bulk": 100_000, "drain": 50_000, "e2e": 20_000, "latency": 2_000},
}
QUICK_TASKS = {
    "fastq": {"enqueue": 5_000, "bulk": 20_000, "drain": 20_000, "e2e": 10_000, "latency": 500},
    "celery": {"enqueue": 5_000, "bulk": 10_000, "drain": 5_000, "e2e": 2_000, "latency": 500},
    "dramatiq": {"enqueue": 5_000, "bulk": 10_000, "drain": 10_000, "e2e": 5_000, "latency": 500},
}

#: Said in the table's footnotes when `fastq bench` does not describe its own settings.
FASTQ_CONFIG = ("`fastq worker -P process -c P` with its defaults (prefetch 100, acks batched every 10 ms); "
                "bulk = `app.send_many` (pipelined)")
FASTQ_REALISTIC_CONFIG = ("realistic rows: one `fastq worker -P thread|process -c N` per worker with its defaults "
                          "(prefetch 100 with its adaptive fetch window for slow tasks); (start, end) via ResultSet")


# --- command line -------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", default="redis://127.0.0.1:6379/5",
                   help="Redis URL for all three systems (broker and results). Its DB is FLUSHED. "
                        "Default: %(default)s")
    p.add_argument("--quick", action="store_true", help="Small N everywhere (a smoke run, not for RESULTS.md).")
    p.add_argument("--tasks", default="",
                   help="Override N: a bare number sets every scenario of every system; "
                        "'scenario=N' or 'system:scenario=N' items, comma-separated, set one.")
    p.add_argument("--scenarios", "--scenario", default=",".join(SCENARIOS),
                   help="Comma-separated scenarios to run (default: all but the opt-in "
                        f"{', '.join(EXTRA_SCENARIOS)}).")
    p.add_argument("--rows", default="",
                   help="realistic: comma-separated row filters, each a row number or a case-insensitive "
                        "substring of the row's label ('sleep 100ms thread -c 8 / 1 worker / running'), "
                        "e.g. 'sleep 100ms' or 'mix 1ms-5s thread' (default: every row).")
    p.add_argument("--systems", default="",
                   help="Comma-separated systems (default: fastq, celery, dramatiq; the producers scenario "
                        f"adds {', '.join(ASYNC_PEERS)}).")
    p.add_argument("--repeat", type=int, default=2,
                   help="Run each cell R times and keep the best (highest rate / lowest p50): "
                        "the usual answer to a noisy machine. Default %(default)s.")
    p.add_argument("--write-results", action="store_true", help=f"Write the run to {RESULTS_MD.relative_to(REPO)}.")
    p.add_argument("--json-out", type=Path, help="Also save every raw JSON result to this file.")
    args = p.parse_args(argv)
    args.scenario_list = _pick(args.scenarios, SCENARIOS + EXTRA_SCENARIOS, "--scenarios")
    args.realistic_rows = pick_rows(args.rows) if "realistic" in args.scenario_list else []
    if args.rows and "realistic" not in args.scenario_list:
        raise SystemExit("--rows: only for --scenario realistic")
    args.system_list = _pick(args.systems or ",".join(SYSTEMS), SYSTEMS + ASYNC_PEERS, "--systems")
    args.producer_systems = args.system_list if args.systems else list(SYSTEMS + ASYNC_PEERS)
    args.system_list = [s for s in args.system_list if s in SYSTEMS]
    args.plan = plan_tasks(QUICK_TASKS if args.quick else FULL_TASKS, args.tasks)
    return args


def _pick(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    picked = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in picked if v not in allowed]
    if bad:
        raise SystemExit(f"{flag}: unknown {', '.join(bad)} (choose from {', '.join(allowed)})")
    return [v for v in allowed if v in picked]  # canonical order


def plan_tasks(base: dict[str, dict[str, int]], spec: str) -> dict[str, dict[str, int]]:
    """Apply a --tasks spec ("5000", "drain=50000", "celery:e2e=5000", comma-separated)."""
    plan = {system: dict(ns) for system, ns in base.items()}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        target, _, number = item.rpartition("=")
        try:
            n = int(number)
        except ValueError:
            raise SystemExit(f"--tasks: {item!r} is not N, scenario=N or system:scenario=N") from None
        system, _, scenario = target.rpartition(":")
        for sys_name in [system] if system else SYSTEMS:
            for sc in [scenario] if scenario else SCENARIOS:
                if sys_name not in plan or sc not in SCENARIOS:
                    raise SystemExit(f"--tasks: unknown system or scenario in {item!r}")
                plan[sys_name][sc] = n
    return plan


def load_realistic():
    """src/fastq/bench_realistic.py, by path (as the peers load it; compare.py may run without fastq)."""
    spec = importlib.util.spec_from_file_location("bench_realistic", REALISTIC_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def row_label(row: tuple) -> str:
    """'sleep 100ms thread -c 8 / 1 worker / running': what --rows matches and the table shows.
    No commas: --rows splits on them (a label's ', 1 worker' once matched every 1-worker row)."""
    name, pool, concurrency, when, workers = row
    return f"{name} {pool} -c {concurrency} / {workers} worker{'s' if workers > 1 else ''} / {when}"


def pick_rows(spec: str) -> list[int]:
    """Indices into ROWS matched by a --rows spec (every row when it is empty)."""
    rows = load_realistic().ROWS
    items = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if not items:
        return list(range(len(rows)))
    # A bare number is a row number only: as a substring, "0" would match "100ms" and "50ms".
    picked = [i for i, row in enumerate(rows)
              if any(item == str(i) if item.isdigit() else item in row_label(row).lower() for item in items)]
    if not picked:
        raise SystemExit(f"--rows: {spec!r} matches no row; rows are: "
                         + "; ".join(f"{i} {row_label(r)}" for i, r in enumerate(rows)))
    return picked


# --- the peers' virtual environment ---------------------------------------------------


def peer_python(system: str) -> Path:
    """The interpreter a peer runs under: the shared peers' venv, or an async peer's own
    (arq needs redis-py < 6, taskiq-redis >= 8: they cannot share one)."""
    return VENV_PY if system not in ASYNC_PEERS else HERE / ".peers" / f"venv-{system}" / "bin" / "python"


def ensure_venv(system: str | None = None) -> None:
    """Create a peers' virtual environment (benchmarks/.peers/venv, or venv-<system> for an
    async peer) and install its requirements, unless it is up to date."""
    requirements = REQUIREMENTS if system is None else PEERS_DIR / f"requirements-{system}.txt"
    python = VENV_PY if system is None else peer_python(system)
    venv, stamp = python.parent.parent, python.parent.parent / ".requirements.sha256"
    want = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return
    if not python.exists():
        say(f"creating the peers' virtual environment at {venv.relative_to(REPO)}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    say(f"installing the peers from {requirements.relative_to(REPO)} (pip)")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(requirements)], check=True)
    stamp.write_text(want + "\n")


def fastq_bench_available() -> bool:
    """True when this interpreter has a working ``fastq bench`` command."""
    try:
        proc = subprocess.run([sys.executable, "-m", "fastq", "bench", "--help"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


# --- running one cell -----------------------------------------------------------------


@dataclass
class Cell:
    """One system's result for one table row group (scenario, processes)."""

    system: str
    scenario: str
    processes: int | None
    result: dict | None = None
    error: str | None = None
    meta: dict = field(default_factory=dict)  # tool, version, compiled, config


def realistic_command(system: str, broker: str, index: int) -> list[str]:
    """The command line that runs one realistic row for one system, printing JSON."""
    if system == "fastq":
        return [sys.executable, "-m", "fastq", "bench", "--broker", broker, "--scenario", "realistic",
                "--rows", str(index), "--json"]
    return [str(VENV_PY), str(PEERS_DIR / f"{system}_bench.py"), "--broker", broker, "--scenario", "realistic",
            "--row", str(index), "--json"]


def bench_command(system: str, broker: str, scenario: str, n: int, processes: int | None) -> list[str]:
    """The command line that runs one scenario for one system, printing JSON."""
    tail = ["--broker", broker, "--scenario", scenario, "--tasks", str(n), "--json"]
    if processes is not None:
        tail += ["--processes", str(processes)]
    if system == "fastq":
        return [sys.executable, "-m", "fastq", "bench", *tail]
    return [str(VENV_PY), str(PEERS_DIR / f"{system}_bench.py"), *tail]


def run_cell(system: str, broker: str, scenario: str, processes: int | None, cmd: list[str]) -> Cell:
    """Run one system's benchmark command in a subprocess and parse its JSON."""
    cell = Cell(system, scenario, processes)
    flush_db(broker)  # every run starts from an empty DB, whatever the previous one left
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=REPO)
    except subprocess.TimeoutExpired:
        cell.error = f"timed out after {RUN_TIMEOUT}s"
        return cell
    if proc.returncode != 0:
        cell.error = _last_line(proc.stderr) or f"exit code {proc.returncode}"
        return cell
    try:
        doc = json.loads(proc.stdout.strip().splitlines()[-1])
        if scenario == "producers" and doc["results"] == []:  # a shape this system has no API for
            cell.meta = {k: doc.get(k) for k in ("tool", "version", "compiled", "config")}
            return cell
        cell.result = _matching(doc["results"], scenario, processes)
    except (ValueError, KeyError, IndexError, LookupError) as exc:
        cell.error = f"unreadable output ({exc}): {_last_line(proc.stdout)}"
        return cell
    cell.meta = {k: doc.get(k) for k in ("tool", "version", "compiled", "config")}
    return cell


def _matching(results: list[dict], scenario: str, processes: int | None) -> dict:
    for r in results:
        if r.get("scenario") == scenario and (processes is None or r.get("processes", processes) == processes):
            return r
    raise LookupError(f"no {scenario} result")


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def best(cells: list[Cell]) -> Cell:
    """Of repeated runs, the best one (highest rate, else lowest makespan/ideal, else lowest p50);
    errors last."""
    ok = [c for c in cells if c.result]
    if not ok:
        return cells[-1]
    if "ratio" in ok[0].result:
        return min(ok, key=lambda c: c.result["ratio"])
    if "rate" in ok[0].result:
        return max(ok, key=lambda c: c.result["rate"])
    return min(ok, key=lambda c: c.result["p50_ms"])


def flush_db(broker: str) -> None:
    """FLUSHDB on the benchmark DB (only that DB)."""
    import redis

    redis.Redis.from_url(broker).flushdb()


# --- the whole run --------------------------------------------------------------------


def row_groups(scenarios: list[str]) -> list[tuple[str, int | None]]:
    """(scenario, processes) in table order: drain once per process count."""
    groups: list[tuple[str, int | None]] = []
    for sc in scenarios:
        if sc in EXTRA_SCENARIOS:
            continue  # its own table
        if sc == "drain":
            groups += [(sc, p) for p in DRAIN_PROCESSES]
        elif sc == "e2e":
            groups.append((sc, E2E_PROCESSES))
        else:
            groups.append((sc, None))
    return groups


def run_all(args: argparse.Namespace, systems: list[str]) -> dict[tuple[str, int | None], dict[str, Cell]]:
    """Scenario by scenario, system by system (so each row's systems run close in time)."""
    table: dict[tuple[str, int | None], dict[str, Cell]] = {}
    for scenario, procs in row_groups(args.scenario_list):
        row = table.setdefault((scenario, procs), {})
        for system in systems:
            n = args.plan[system][scenario]
            tries = []
            for _ in range(max(1, args.repeat)):
                t0 = time.perf_counter()
                cmd = bench_command(system, args.broker, scenario, n, procs)
                cell = run_cell(system, args.broker, scenario, procs, cmd)
                tries.append(cell)
                say(f"{label(scenario, procs):<16} {system:<9} N={n:<7} {summary(cell)}  "
                    f"[{time.perf_counter() - t0:.0f}s]")
            row[system] = best(tries)
    flush_db(args.broker)
    return table


def run_realistic(args: argparse.Namespace, systems: list[str]) -> list[tuple[tuple, dict[str, Cell]]]:
    """Row by row, system by system: a row's systems run within a minute of each other."""
    rows = load_realistic().ROWS
    say(f"realistic: {len(args.realistic_rows)} of {len(rows)} rows x {len(systems)} systems x {args.repeat} "
        f"run(s): " + "; ".join(row_label(rows[i]) for i in args.realistic_rows))
    table = []
    for i in args.realistic_rows:
        cells = {}
        for system in systems:
            tries = []
            for _ in range(max(1, args.repeat)):
                t0 = time.perf_counter()
                cell = run_cell(system, args.broker, "realistic", None, realistic_command(system, args.broker, i))
                tries.append(cell)
                r = cell.result
                result = (f"makespan {r['makespan_s']:.2f} s = {r['ratio']:.2f}x ideal, wait p99 "
                          f"{r['wait_p99_ms']:.0f} ms" if r else f"ERROR: {cell.error}")
                say(f"{row_label(rows[i]):<44} {system:<9} {result}  [{time.perf_counter() - t0:.0f}s]")
            cells[system] = best(tries)
        table.append((rows[i], cells))
    flush_db(args.broker)
    return table


def load_producers():
    """src/fastq/bench_producers.py, by path (as the peers load it)."""
    spec = importlib.util.spec_from_file_location("bench_producers", PRODUCERS_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def producers_command(system: str, broker: str, index: int, n: int) -> list[str]:
    """The command line that runs one producers row (1-based) for one system, printing JSON."""
    if system == "fastq":
        return [sys.executable, "-m", "fastq", "bench", "--broker", broker, "--scenario", "producers",
                "--rows", str(index), "--tasks", str(n), "--json"]
    return [str(peer_python(system)), str(PEERS_DIR / "producers_bench.py"), "--system", system, "--broker", broker,
            "--row", str(index), "--tasks", str(n), "--json"]


def run_producers(args: argparse.Namespace, systems: list[str]) -> list[tuple[str, dict[str, Cell]]]:
    """Row by row, system by system, best of --repeat (highest rate)."""
    prod = load_producers()
    n = 5_000 if args.quick else prod.DEFAULT_TASKS
    table = []
    for index, row in enumerate(prod.ROWS, 1):
        cells = {}
        for system in systems:
            tries = []
            for _ in range(max(1, args.repeat)):
                cell = run_cell(system, args.broker, "producers", None,
                                producers_command(system, args.broker, index, n))
                tries.append(cell)
                r = cell.result
                shown = (f"{r['rate']:,.0f} tasks/s, p50 {r['p50_ms']:.3f} ms" if r
                         else f"ERROR: {cell.error}" if cell.error else "no such API")
                say(f"producers {prod.label(row):<14} {system:<9} {shown}")
            cells[system] = best(tries)
        table.append((prod.label(row), cells))
    flush_db(args.broker)
    return table


def format_producers_table(table: list[tuple[str, dict[str, Cell]]], systems: list[str]) -> str:
    """A Markdown table: tasks/s (p50 wait) per system per shape, and fastq over the best peer."""
    head = ["producers", *systems, "fastq / best peer"]
    out = [head]
    for name, cells in table:
        shown = []
        for s in systems:
            c = cells.get(s)
            r = c.result if c else None
            shown.append(f"{r['rate']:,.0f} ({r['p50_ms']:.2f} ms)" if r else "error" if c and c.error else "-")
        peers = [cells[s].result["rate"] for s in systems if s != "fastq" and cells.get(s) and cells[s].result]
        fq = cells.get("fastq")
        ratio = f"{fq.result['rate'] / max(peers):.1f}x" if fq and fq.result and peers else "-"
        out.append([name, *shown, ratio])
    widths = [max(len(r[i]) for r in out) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             + " |" for r in out]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":") for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def producers_footnotes(table: list[tuple[str, dict[str, Cell]]], systems: list[str]) -> list[str]:
    return system_notes(table, systems, "`delay()` / `await delay_async()`", str)


PRODUCERS_NOTE = (
    "tasks/s of no-op sends into a queue nobody drains, and (in brackets) the p50 of each call's wait, from the "
    "call to its return. '-': the system has no API for that shape (Celery and Dramatiq send synchronously; arq "
    "and taskiq only from coroutines, so their '1 caller' is one coroutine awaiting each send). fastq / best peer "
    "is over the fastest peer measured in that row.")


def label(scenario: str, procs: int | None) -> str:
    return f"{scenario} ({procs} proc)" if procs else scenario


def summary(cell: Cell) -> str:
    r = cell.result
    if r is None:
        return f"ERROR: {cell.error}"
    if "rate" in r:
        return f"{r['rate']:,.0f} tasks/s"
    return f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"


# --- the table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One table row: which field of which scenario, and whether higher is better."""

    scenario: str
    procs: int | None
    name: str
    key: str
    fmt: str
    higher_is_better: bool


def metrics(groups: list[tuple[str, int | None]]) -> list[Metric]:
    """The table's rows, given which scenarios ran."""
    rows = []
    for sc, p in groups:
        if sc != "latency":
            rows.append(Metric(sc, p, "tasks/s", "rate", ",.0f", True))
        if sc == "drain":
            rows.append(Metric(sc, p, "start-up s", "startup_s", ".2f", False))
        if sc == "bulk":
            rows.append(Metric(sc, p, "Redis bytes/msg", "bytes_per_message", ",.0f", False))
        if sc == "e2e":
            rows.append(Metric(sc, p, "worker RSS MB", "worker_rss_mb", ",.0f", False))
        if sc == "latency":
            rows.append(Metric(sc, p, "p50 ms", "p50_ms", ".2f", False))
            rows.append(Metric(sc, p, "p99 ms", "p99_ms", ".2f", False))
    return rows


def format_table(table: dict[tuple[str, int | None], dict[str, Cell]], systems: list[str]) -> str:
    """A Markdown table (readable as plain text too): values with N, then fastq/peer."""
    peers = [s for s in systems if s != "fastq"]
    ratio_cols = [f"fastq/{p}" for p in peers] if "fastq" in systems else []
    head = ["scenario", "metric", *systems, *ratio_cols]
    rows = [head]
    for m in metrics(list(table)):
        cells = table[(m.scenario, m.procs)]
        values = [_value_cell(cells.get(s), m) for s in systems]
        ratios = [_ratio(cells.get("fastq"), cells.get(p), m) for p in peers] if ratio_cols else []
        rows.append([label(m.scenario, m.procs), m.name, *values, *ratios])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ("-" if i < 2 else ":") for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def _value_cell(cell: Cell | None, m: Metric) -> str:
    if cell is None:
        return "-"
    if cell.result is None:
        return "error"
    v = cell.result.get(m.key)
    if v is None:
        return "-"
    n = cell.result.get("tasks", cell.result.get("samples"))
    return f"{format(v, m.fmt)} (N={_short(n)})" if m.key in ("rate", "p50_ms") else format(v, m.fmt)


def _short(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _ratio(fq: Cell | None, peer: Cell | None, m: Metric) -> str:
    a = fq.result.get(m.key) if fq and fq.result else None
    b = peer.result.get(m.key) if peer and peer.result else None
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def footnotes(table: dict[tuple[str, int | None], dict[str, Cell]], systems: list[str]) -> list[str]:
    """Versions and settings per system, then errors, as bullet lines."""
    notes = []
    for system in systems:
        meta = next((c.meta for cells in table.values() if (c := cells.get(system)) and c.meta), None)
        if meta is None:
            notes.append(f"- **{system}**: no successful run")
            continue
        version = meta.get("version")
        if system == "fastq":
            core = "compiled core" if meta.get("compiled") else "pure-Python core"
            notes.append(f"- **fastq {version}** ({core}): {meta.get('config') or FASTQ_CONFIG}")
        else:
            notes.append(f"- **{system} {version}**: {meta.get('config')}")
    for (sc, p), cells in table.items():
        for system, c in cells.items():
            if c.error:
                notes.append(f"- error, {system} {label(sc, p)}: {c.error}")
    return notes


def versions(table, systems) -> str:
    """"fastq 0.1.0 (compiled core), celery 5.7.0, dramatiq 2.2.1" from the runs' JSON."""
    out = []
    for system in systems:
        meta = next((c.meta for cells in table.values() if (c := cells.get(system)) and c.meta), {})
        extra = ""
        if system == "fastq" and meta:
            extra = " (compiled core)" if meta.get("compiled") else " (pure-Python core)"
        out.append(f"{system} {meta.get('version', '?')}{extra}")
    return ", ".join(out)


#: "ahead" calls two systems level when they are this close (relative), or, for waits, within
#: TIE_MS: a shared 2-core machine moves single runs by more than that.
TIE = 0.05
TIE_MS = 5.0


def format_realistic_table(table: list[tuple[tuple, dict[str, Cell]]], systems: list[str]) -> str:
    """A Markdown table: per row, makespan/ideal and wait p99 per system, fastq/peer, who is ahead."""
    peers = [s for s in systems if s != "fastq"]
    ratio_cols = [f"fastq/{p}" for p in peers] if "fastq" in systems else []
    head = ["row", "metric", *systems, *ratio_cols, "ahead"]
    out = [head]
    for row, cells in table:
        tasks = next((c.result["tasks"] for c in cells.values() if c.result), "?")
        name = f"{row_label(row)} ({tasks} tasks)"
        for metric, key, extra, fmt, tie_abs in (("makespan/ideal (makespan s)", "ratio", "makespan_s", ".2f", 0.0),
                                                 ("wait p99 ms (ideal p99)", "wait_p99_ms", "ideal_wait_p99_ms",
                                                  ".0f", TIE_MS)):
            values = {s: c.result[key] for s, c in cells.items() if c.result}
            shown = [f"{format(c.result[key], fmt)} ({format(c.result[extra], fmt)})" if c.result else "error"
                     for c in (cells[s] for s in systems)]
            ratios = [f"{values['fastq'] / values[p]:.2f}x" if values.get("fastq") is not None and values.get(p)
                      else "-" for p in peers] if ratio_cols else []
            out.append([name, metric, *shown, *ratios, ahead(values, tie_abs)])
            name = ""
    widths = [max(len(r[i]) for r in out) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) if i < 2 or i == len(head) - 1 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))) + " |" for r in out]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + (":" if 1 < i < len(head) - 1 else "-")
                                   for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def ahead(values: dict[str, float], tie_abs: float) -> str:
    """The system with the lowest value, or 'a = b' when the next is within TIE (or tie_abs)."""
    if not values:
        return "-"
    ranked = sorted(values, key=values.get)
    low = values[ranked[0]]
    level = [s for s in ranked if values[s] - low <= max(TIE * low, tie_abs)]
    return " = ".join(level) if len(level) < len(values) or len(values) == 1 else "all level"


def realistic_footnotes(table: list[tuple[tuple, dict[str, Cell]]], systems: list[str]) -> list[str]:
    """Each system's realistic settings, then errors."""
    return system_notes(table, systems, FASTQ_REALISTIC_CONFIG, row_label)


def system_notes(table: list[tuple], systems: list[str], fastq_config: str, name_of) -> list[str]:
    """Each system's settings as its runs reported them, then every error, naming the
    row (``name_of(row)``): the footnotes of the realistic and producers tables."""
    notes = []
    for system in systems:
        meta = next((cells[system].meta for _, cells in table if cells.get(system) and cells[system].meta), None)
        if meta is None:
            notes.append(f"- **{system}**: no successful run")
        elif system == "fastq":
            core = "compiled core" if meta.get("compiled") else "pure-Python core"
            notes.append(f"- **fastq {meta.get('version')}** ({core}): {meta.get('config') or fastq_config}")
        else:
            notes.append(f"- **{system} {meta.get('version')}**: {meta.get('config')}")
    for row, cells in table:
        for system, c in cells.items():
            if c.error:
                notes.append(f"- error, {system} {name_of(row)}: {c.error}")
    return notes


REALISTIC_NOTE = (
    "makespan/ideal: first task start to last task end, over what a work-conserving scheduler with the same "
    "slots would need for the same tasks released at the same moments (1.00 is perfect; a CPU-bound task's "
    "slots are capped by the cores, and by one for threads). wait p99: send (for tasks queued before the "
    "workers started, the first task start) to task start. fastq/peer below 1 means fastq is closer to the "
    f"ideal, or waits less. ahead: the lowest value; systems within {TIE:.0%} of it (waits: or within "
    f"{TIE_MS:.0f} ms) are level with it. Every system measured the same way: its send time taken just "
    "before each delay()/send(), its tasks returning their own (start, end) wall times.")

RATIO_NOTE = ("Ratios are fastq / peer for each metric: above 1 means fastq is faster for tasks/s, "
              "below 1 means fastq is better for seconds, ms, bytes and MB.")


# --- machine description and RESULTS.md ------------------------------------------------


def machine(broker: str) -> dict[str, str]:
    """What the numbers were measured on."""
    import redis

    info = redis.Redis.from_url(broker).info("server")
    venv_py = subprocess.run([str(VENV_PY), "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True).stdout.strip() if VENV_PY.exists() else "-"
    return {
        "CPU": _cpu_model(),
        "cores": str(len(os.sched_getaffinity(0))),
        "memory": _mem_total(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_version()} (fastq); {venv_py} (peers' venv)",
        "Redis": f"{info.get('redis_version')} at {_safe(broker)} (shared by all three)",
        "load average": _loadavg(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        return f"{kb / 2**20:.0f} GiB"
    except (OSError, IndexError, ValueError):
        return "unknown"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _safe(url: str) -> str:
    """The URL without a password."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def command_line() -> str:
    """The exact command, as typed from the repository root."""
    return " ".join(shlex.quote(a) for a in ["python", "benchmarks/compare.py", *sys.argv[1:]])


def _results_head(title: str, mach: dict[str, str], load_after: str, started: str, wall: float,
                  extra: list[str]) -> list[str]:
    """A results file's title, command, machine and the "Results" heading (both files share them)."""
    return [
        title,
        "",
        f"Measured {started} by `benchmarks/compare.py` in {wall / 60:.1f} min wall time. Command:",
        "",
        "```",
        command_line(),
        "```",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in mach.items() if k != "load average"],
        *extra,
        f"- load average (1/5/15 min) before: {mach['load average']}; after: {load_after}",
        "",
        "## Results",
    ]


def results_markdown(table, systems, mach: dict[str, str], load_after: str, started: str, wall: float,
                     repeat: int) -> str:
    """The whole of RESULTS.md for this run."""
    lines = [
        *_results_head("# fastq vs Celery vs Dramatiq", mach, load_after, started, wall,
                       [f"- versions: {versions(table, systems)}"]),
        "",
        format_table(table, systems),
        "",
        RATIO_NOTE + " N is given per cell: the peers run smaller N where they would take minutes. "
        f"Each system's figures in a row group come from its best of {repeat} run(s) (highest tasks/s, "
        "lowest p50), so start-up, bytes and RSS belong to that run.",
        "",
        "Settings:",
        "",
        *footnotes(table, systems),
        "",
        METHOD,
    ]
    return "\n".join(lines) + "\n"


def realistic_markdown(table, systems, mach: dict[str, str], load_after: str, started: str, wall: float,
                       repeat: int) -> str:
    """The whole of RESULTS-realistic.md for this run."""
    lines = [
        *_results_head("# fastq vs Celery vs Dramatiq: realistic tasks", mach, load_after, started, wall, []),
        "",
        format_realistic_table(table, systems),
        "",
        REALISTIC_NOTE + f" Each system's figures in a row come from its best of {repeat} run(s) "
        "(lowest makespan/ideal); the wait p99 is that run's.",
        "",
        "Settings (one configuration per system for every row):",
        "",
        *realistic_footnotes(table, systems),
        "",
        "Workloads and rows: `src/fastq/bench_realistic.py` (`fastq bench -s realistic` runs the same rows "
        "for fastq alone).",
    ]
    return "\n".join(lines) + "\n"


METHOD = """## Method

Every system runs the same five scenarios against the same Redis DB (flushed before each
run), one system after another within each scenario. Workers are started as subprocesses
with each system's own command (`fastq worker`, `celery -A ... worker`, `dramatiq ...`)
from its own interpreter (peers: the venv in `benchmarks/.peers/venv`).

- **enqueue**: one producer, N no-op tasks, one `.delay()` / `.send()` at a time.
- **bulk**: N no-op tasks through each system's documented many-at-once path
  (fastq `app.send_many`, pipelined; Celery `group(...).apply_async()`, which publishes one
  message per round trip; Dramatiq `group(...).run()`, one `enqueue` Lua call per message,
  since Dramatiq has no pipelined enqueue). Redis bytes/msg = growth of `used_memory` / N.
- **drain**: N no-op tasks queued first, results ignored; then the worker starts. The runner
  polls the broker's own keys every 2 ms and does not touch the tasks: *start-up* = worker
  start to the first message leaving the queue; *tasks/s* = N / (that moment to the queue
  being empty with nothing in flight). fastq: stream lengths and the consumer group's
  pending count; Celery: the `celery` list and kombu's `unacked` hash (early ack: a message
  leaves `unacked` just before its no-op runs); Dramatiq: the `dramatiq:default` list and the
  `dramatiq:default.msgs` hash, whose entry is deleted on ack, after the actor ran.
- **e2e**: workers started and warmed up with one round trip (Celery: every worker answers a
  control ping first; Dramatiq: every process has booted), then the wall time of sending N
  tasks that return their argument in bulk and collecting every result (fastq `ResultSet`,
  Celery `GroupResult.get()`, Dramatiq `group.get_results()` with the Results middleware on
  a `RedisBackend`). Results are checked.
- **latency**: one idle worker process, one producer, `delay()` then `get()` (Dramatiq:
  `send()` then `get_result(block=True)`) N times in a row; p50 and p99 of the round trips.
"""


def show(table: str, note: str, notes: list[str]) -> None:
    """Print one table with what it measures and its footnotes."""
    print()
    print(table)
    print()
    print(note)
    print("\n".join(notes))


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    systems = list(args.system_list)
    if any(s != "fastq" for s in systems):
        ensure_venv()
    if "fastq" in systems and not fastq_bench_available():
        say("fastq bench unavailable (no working `python -m fastq bench`): running the peers only")
        systems.remove("fastq")
    mach = machine(args.broker)
    table = run_all(args, systems) if any(sc not in EXTRA_SCENARIOS for sc in args.scenario_list) else {}
    realistic = run_realistic(args, systems) if args.realistic_rows else []
    prod_systems = [s for s in args.producer_systems if s in systems or s in ASYNC_PEERS]
    if "producers" in args.scenario_list:
        for peer in ASYNC_PEERS:
            if peer in prod_systems:
                ensure_venv(peer)
    producers = run_producers(args, prod_systems) if "producers" in args.scenario_list else []
    wall = time.perf_counter() - t0
    if table:
        show(format_table(table, systems), RATIO_NOTE, footnotes(table, systems))
    if realistic:
        show(format_realistic_table(realistic, systems), REALISTIC_NOTE, realistic_footnotes(realistic, systems))
    if producers:
        show(format_producers_table(producers, prod_systems), PRODUCERS_NOTE,
             producers_footnotes(producers, prod_systems))
    if args.json_out:
        raw = {f"{sc}/{p}": {s: vars(c) for s, c in cells.items()} for (sc, p), cells in table.items()}
        raw.update({f"realistic/{row_label(row)}": {s: vars(c) for s, c in cells.items()}
                    for row, cells in realistic})
        args.json_out.write_text(json.dumps(raw, indent=1, default=str))
    if args.write_results:
        # Separate files, so that an opt-in realistic run never replaces the main table.
        if table:
            RESULTS_MD.write_text(results_markdown(table, systems, mach, _loadavg(), started, wall, args.repeat))
            say(f"wrote {RESULTS_MD.relative_to(REPO)}")
        if producers:
            head = _results_head("# fastq vs Celery, Dramatiq, arq and taskiq: concurrent producers", mach,
                                 _loadavg(), started, wall, [f"- best of {args.repeat} run(s) per cell"])
            RESULTS_PRODUCERS_MD.write_text("\n".join(head) + "\n\n"
                                            + format_producers_table(producers, prod_systems) + "\n\n"
                                            + PRODUCERS_NOTE + "\n\n"
                                            + "\n".join(producers_footnotes(producers, prod_systems)) + "\n")
            say(f"wrote {RESULTS_PRODUCERS_MD.relative_to(REPO)}")
        if realistic:
            RESULTS_REALISTIC_MD.write_text(realistic_markdown(realistic, systems, mach, _loadavg(), started, wall,
                                                               args.repeat))
            say(f"wrote {RESULTS_REALISTIC_MD.relative_to(REPO)}")
    cells = ([c for cs in table.values() for c in cs.values()] + [c for _, cs in realistic for c in cs.values()]
             + [c for _, cs in producers for c in cs.values()])
    return 1 if any(c.error for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
