"""Run Celery 5.7.0's integration tests against fastq and tabulate the outcomes.

    python -m tests.celery_compat.run [--timeout 20] [--out DIR] [-- extra pytest args]

Prepares the rewritten tests (harness.prepare), starts a private redis-server,
runs them with pytest in a subprocess (one `fastq worker -c 4`, started by their
conftest), reads the JUnit XML and writes ``DIR/results.md`` (and prints it):
the counts, the failures grouped by cause, and every test's outcome.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.celery_compat import harness  # noqa: E402

NA_PREFIX = "not applicable: "

#: Named causes: (label, regex over the failure's message and text). First match wins;
#: anything else is grouped by its normalised exception line.
CAUSES: list[tuple[str, str]] = [
    ("backend.ensure_chords_allowed missing (Celery backend API the chord tests call first)",
     r"has no attribute 'ensure_chords_allowed'"),
    ("stamping (StampingVisitor / Signature.stamp / stamped headers) missing",
     r"StampingVisitor|has no attribute '(?:stamp|stamped_headers|stamp_links)'|revoke_by_stamped_headers"
     r"|test_stamping_mechanism"),
    ("Task.replace missing", r"has no attribute 'replace'"),
    ("signal task_received missing", r"celery\.signals\.task_received"),
    ("app.conf: a Celery setting fastq lacks", r"no (?:fastq )?setting named '(?:\w+)'"),
    ("task Request attribute missing (replaced_task_nesting, is_eager, properties...)",
     r"'fastq\._core\.Request' object has no attribute"),
    ("AsyncResult/GroupResult.as_tuple missing", r"has no attribute 'as_tuple'"),
    ("Task.replace rejects a signature option (immutable)", r"cannot be replaced: unknown apply_async option"),
    ("chord header generator consumed at construction (Celery unrolls it lazily)",
     r"Chord header was unrolled too early"),
    ("empty chain / empty group inside a canvas", r"cannot send an empty chain|replace with an empty group"),
    ("per-test timeout (a wait that never finished)", r"Timeout \(>|Failed: Timeout"),
]

#: Causes told by the test's place rather than its message.
NODE_CAUSES: list[tuple[str, str]] = [
    ("inspect reply differs from Celery's in a detail (the ETA timer's priority, conf's Celery-only settings)",
     r"test_inspect\.py::"),
]


@dataclass
class Outcome:
    nodeid: str
    outcome: str  # passed, failed, error, skipped, not_applicable, xfailed
    message: str = ""
    text: str = ""
    duration: float = 0.0


@dataclass
class Results:
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return sum(1 for o in self.outcomes.values() if o.outcome == kind)

    @property
    def applicable(self) -> int:
        return sum(1 for o in self.outcomes.values() if o.outcome != "not_applicable")

    def passed_ids(self) -> set[str]:
        return {k for k, o in self.outcomes.items() if o.outcome == "passed"}

    def summary(self) -> str:
        n = {k: self.count(k) for k in ("passed", "failed", "error", "skipped", "xfailed", "not_applicable")}
        rate = 100.0 * n["passed"] / self.applicable if self.applicable else 0.0
        return (f"{n['passed']} passed, {n['failed']} failed, {n['error']} errored, {n['skipped']} skipped, "
                f"{n['xfailed']} xfailed of {self.applicable} applicable ({rate:.1f}% pass); "
                f"{n['not_applicable']} not applicable; {len(self.outcomes)} collected")


_RANK = {"error": 5, "failed": 4, "passed": 1, "xfailed": 2, "skipped": 0, "not_applicable": 0}


def parse_junit(path: Path) -> Results:
    res = Results()
    for case in ET.parse(path).getroot().iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        file = case.get("file")
        parts = cls.split(".")
        # classname "t.integration.test_canvas.test_chain" -> t/integration/test_canvas.py::test_chain
        mod_idx = max(i for i, p in enumerate(parts) if p.startswith("test_") and i >= 2) if len(parts) > 2 else 0
        mod_idx = next((i for i, p in enumerate(parts) if p.startswith("test_")), mod_idx)
        nodeid = "/".join(parts[:mod_idx + 1]) + ".py" + "".join(f"::{p}" for p in parts[mod_idx + 1:]) + f"::{name}"
        if file and not nodeid.startswith(file.replace(".py", "")):
            nodeid = f"{file}::{name}"
        outcome, message, text = "passed", "", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                message, text = child.get("message", "") or "", child.text or ""
                if child.tag == "skipped":
                    if child.get("type") == "pytest.xfail":
                        outcome = "xfailed"
                    else:
                        outcome = "not_applicable" if NA_PREFIX in message else "skipped"
                else:
                    outcome = "failed" if child.tag == "failure" else "error"
                break
        prev = res.outcomes.get(nodeid)
        if prev is None or _RANK[outcome] > _RANK[prev.outcome]:
            res.outcomes[nodeid] = Outcome(nodeid, outcome, message, text, float(case.get("time", 0) or 0))
    return res


def _normalise(line: str) -> str:
    line = re.sub(r"0x[0-9a-f]+", "0x…", line)
    line = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>", line)
    line = re.sub(r"<(AsyncResult|GroupResult|EagerResult): [^>]*>", r"<\1>", line)
    return line[:160]


def cause_of(o: Outcome) -> str:
    blob = f"{o.message}\n{o.text}"
    for label, pattern in CAUSES:
        m = re.search(pattern, blob)
        if m:
            return label + (f": {m.group(1)}" if m.groups() else "")
    for label, pattern in NODE_CAUSES:
        if re.search(pattern, o.nodeid):
            return label
    first = (o.message or o.text or "?").strip().splitlines()[0] if (o.message or o.text) else "?"
    return _normalise(first)


def example_line(o: Outcome) -> str:
    """The traceback line that raised: the last "file:line: Error" of the report."""
    lines = [ln for ln in o.text.splitlines() if re.match(r"^\S+\.py:\d+: ", ln)]
    return lines[-1] if lines else ""


def table(res: Results) -> str:
    out = [f"# Celery {harness.CELERY_VERSION} integration tests on fastq", "", res.summary(), ""]
    bad = [o for o in res.outcomes.values() if o.outcome in ("failed", "error")]
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in bad:
        groups[cause_of(o)].append(o)
    out += ["## Failures by cause", "", "| n | cause | example | where |", "| ---: | --- | --- | --- |"]
    for cause, items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        ex = items[0]
        out.append(f"| {len(items)} | {cause.replace('|', '/')} | {ex.nodeid.split('::', 1)[1]} "
                   f"| {example_line(ex).replace('|', '/')[:120]} |")
    na = [o for o in res.outcomes.values() if o.outcome == "not_applicable"]
    out += ["", "## Not applicable", ""]
    out += [f"- {o.nodeid}: {o.message.split(NA_PREFIX, 1)[1]}" for o in sorted(na, key=lambda o: o.nodeid)]
    out += ["", "## Every test", "", "| outcome | test | s |", "| --- | --- | ---: |"]
    out += [f"| {o.outcome} | {o.nodeid} | {o.duration:.1f} |" for o in sorted(res.outcomes.values(), key=lambda o: o.nodeid)]
    return "\n".join(out) + "\n"


def run(out_dir: Path, timeout: float = 20.0, extra: list[str] | None = None) -> Results:
    """Prepare, run and parse; writes out_dir/{results.md, junit.xml, pytest.log, worker.log}."""
    from tests.conftest import RedisServer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "celery-tests"
    harness.prepare(work)
    server = RedisServer()
    try:
        env = {**os.environ, "TEST_BROKER": server.url, "TEST_BACKEND": server.url, "REDIS_HOST": "127.0.0.1",
               "REDIS_PORT": str(server.port), "CELERY_COMPAT_TIMEOUT": str(timeout),
               "CELERY_COMPAT_WORKER_LOG": str(out_dir / "worker.log"),
               "PYTHONPATH": os.pathsep.join([str(work), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        env.pop("FASTQ_BROKER_URL", None)  # the outer suite's; the tests name their broker
        junit = out_dir / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rA", f"--junitxml={junit}", "-o", "junit_family=xunit1",
               "-p", "no:randomly", *(extra or [])]
        t0 = time.monotonic()
        with open(out_dir / "pytest.log", "wb") as log:
            subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
        res = parse_junit(junit)
        text = table(res) + f"\n(run took {time.monotonic() - t0:.0f}s; per-test timeout {timeout:g}s)\n"
        (out_dir / "results.md").write_text(text)
        return res
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=20.0, help="per-test timeout, seconds (default 20)")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default: a new temp dir)")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fastq-celery-compat-"))
    res = run(out, args.timeout, args.pytest_args)
    print((out / "results.md").read_text())
    print(f"written to {out}")
    _ = res


if __name__ == "__main__":
    main()
