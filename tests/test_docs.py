"""Every snippet in README.md and docs/*.md runs as written, against a real Redis
(the test DB) and, where a doc asks for one, a real `fastq worker`.

How a doc's blocks are treated (docs/testing.md, "Docs are tested", points here):

- ```python blocks run in order, in one interpreter per doc, sharing one
  namespace, in a sandbox directory that holds the doc's project files. A block
  of ``>>>`` lines runs as a doctest (its printed results are compared).
- ```sh / ```bash blocks run line by line in that directory with bash: a
  ``fastq worker|beat|dashboard|events`` line must keep running for a few seconds
  (then it is stopped); any other line must exit 0. ``pip install`` lines are
  not run; the extras they name must exist in pyproject.toml. Lines that only
  set the environment (``export FASTQ_BROKER_URL=...``) are not run: the test
  sets it.
- Other blocks (output, ```text, ```toml without a marker) are not run.

Markers are HTML comments (invisible on GitHub) on the lines right before a block:

- ``<!-- doc-test: file proj/tasks.py -->``: the block is that file of the
  project (written, not run). README.md's ``proj/tasks.py`` is every doc's
  default project.
- ``<!-- doc-test: skip needs a Redis Cluster -->``: not run; the reason must
  start with "needs" (a cluster, sentinel, another host, a third-party
  service, minutes of a quiet machine).
- ``<!-- doc-test: worker -A proj.tasks:app -Q default,mail -->``: a ``fastq
  worker`` with these arguments runs while the doc's blocks run (anywhere in
  the doc; several markers start several workers).
- ``<!-- doc-test: setup ... -->`` (code inside the comment): hidden Python run
  before the next block, for what the prose already said (``from proj.tasks
  import app``).

A runnable block must not name a broker URL (``redis://``) except as the default
of an environment lookup (``os.environ.get("FASTQ_TEST_BROKER_URL", "redis://...")``),
so no snippet writes to a database the reader did not choose.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from conftest import ROOT, free_port
from fastq.cli import main

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^([ \t]*)```([\w+-]*)[^\n]*\n(.*?)^\1```[ \t]*$", re.S | re.M)  # also indented (in lists)
MARKER = re.compile(r"<!--\s*doc-test:\s*(\w+)\s*(.*?)\s*-->", re.S)
LANGS = {"python": "python", "py": "python", "sh": "sh", "bash": "sh", "shell": "sh"}
LONG_RUNNING = {"worker", "beat", "dashboard", "events"}
URL_OK = re.compile(r"""environ\.get\(\s*["'][A-Z_]+["']\s*,\s*["']redis://""")
BIN = Path(sys.executable).parent


@dataclass
class Block:
    doc: str
    line: int
    lang: str  # "python", "sh", or "" (not run)
    code: str
    file: str | None = None
    skip: str | None = None
    setup: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def parse(path: Path) -> tuple[list[Block], list[str]]:
    """A doc's blocks with their markers, and its worker markers' arguments."""
    text = path.read_text()
    doc = str(path.relative_to(ROOT))
    blocks, workers, pos = [], [], 0
    for m in FENCE.finditer(text):
        between = text[pos:m.start()]
        pos = m.end()
        b = Block(doc, text.count("\n", 0, m.start()) + 1, LANGS.get(m.group(2), ""), textwrap.dedent(m.group(3)))
        for kind, arg in MARKER.findall(between):
            if kind == "file":
                b.file = arg
            elif kind == "skip":
                assert arg.startswith("needs "), f"{b.where}: a skip says what the block needs, not {arg!r}"
                b.skip = arg
            elif kind == "setup":
                b.setup.append(arg)
            elif kind == "worker":
                workers.append(arg)
            else:
                raise AssertionError(f"{b.where}: unknown doc-test marker {kind!r}")
        blocks.append(b)
    workers += [arg for kind, arg in MARKER.findall(text[pos:]) if kind == "worker"]
    return blocks, workers


def _default_project() -> dict[str, str]:
    files = {b.file: b.code for b in parse(ROOT / "README.md")[0] if b.file}
    assert "proj/tasks.py" in files, "README.md must show proj/tasks.py (<!-- doc-test: file proj/tasks.py -->)"
    return files


# --- the Python runner (a fresh interpreter per doc) -----------------------------------------------

RUNNER = r'''
import doctest, json, sys, traceback
sys.path.insert(0, ".")
ns = {"__name__": "__doc_snippets__"}
for where, code in json.load(open(sys.argv[1])):
    try:
        if code.lstrip().startswith(">>>"):
            test = doctest.DocTestParser().get_doctest(code, ns, where, where, 0)
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
            runner.run(test, clear_globs=False)
            ns.update(test.globs)  # DocTest works on a copy: later blocks see its names
            if runner.failures:
                sys.exit(f"{where}: the doctest's output differs (above)")
        else:
            exec(compile(code, where, "exec"), ns)
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(f"{where}: the snippet failed")
print("ran", flush=True)
'''


def _env(redis_url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(FASTQ_BROKER_URL=redis_url, FASTQ_TEST_BROKER_URL=redis_url, FASTQ_DASHBOARD_PORT=str(free_port()),
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONDONTWRITEBYTECODE="1")
    return env


def _start_worker(args: str, i: int, cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    words = shlex.split(args)
    name = [] if {"-n", "--hostname"} & set(words) else ["-n", f"docs-{i}@doc-test"]
    pool = [] if {"-P", "--pool"} & set(words) else ["-P", "thread", "-c", "4"]  # light on a shared machine
    with open(log, "ab") as out:
        return subprocess.Popen([str(BIN / "fastq"), "worker", *words, *name, *pool],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _extras() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, re.M))


def _commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out += [c.strip() for c in re.split(r"&&|;", line) if c.strip()]
    return out


def _run_shell(cmd: str, where: str, cwd: Path, env: dict, log: Path) -> None:
    words = shlex.split(cmd)
    if words[:2] == ["pip", "install"]:
        for extra in re.findall(r"fastq\[([\w,-]+)\]", cmd):
            for e in extra.split(","):
                assert e in _extras(), f"{where}: `{cmd}` names extra {e!r}, which pyproject.toml does not define"
        return
    if words[0] == "export":
        assert all(w.split("=")[0].startswith("FASTQ_") for w in words[1:]), f"{where}: exports only FASTQ_ settings"
        return
    sub = next((w for w in words[1:] if w in main.commands), None) if words[0] == "fastq" else None
    if sub in LONG_RUNNING and "--list" not in words:
        with open(log, "ab") as out:
            out.write(f"\n$ {cmd}\n".encode())
            proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=cwd, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            assert proc.poll() is None, f"{where}: `{cmd}` exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        finally:
            _stop(proc)
        return
    out = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, f"{where}: `{cmd}` exited with {out.returncode}:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_doc_snippets_run(path, redis_url, tmp_path):
    blocks, workers = parse(path)
    runnable = [b for b in blocks if b.lang and not b.file and not b.skip]
    for b in runnable:
        for url in re.finditer(r"redis://", b.code):
            line = b.code[b.code.rfind("\n", 0, url.start()) + 1:b.code.find("\n", url.start())]
            ok = URL_OK.search(line) or line.strip().startswith("export FASTQ_")  # exports are not run
            assert ok, f"{b.where}: a runnable snippet names a broker URL: {line.strip()!r}"
    # the project: README's files, then this doc's own
    project = tmp_path / "project"
    files = {**_default_project(), **{b.file: b.code for b in blocks if b.file}}
    for name, code in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(code)
    (project / "proj" / "__init__.py").touch()
    env = _env(redis_url)
    log = tmp_path / "processes.log"
    procs = [_start_worker(args, i, project, env, log) for i, args in enumerate(workers)]
    try:
        if procs:  # the doc's snippets expect a worker that consumes: wait until it is registered
            client = redis.Redis.from_url(redis_url)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and client.zcard("fastq:workers") < len(procs):
                assert all(p.poll() is None for p in procs), f"{path.name}: a worker exited:\n{log.read_text()}"
                time.sleep(0.1)
        python = []
        for b in blocks:
            if b.skip or b.file:
                continue
            python += [(f"{b.where} (setup)", s) for s in b.setup]
            if b.lang == "python":
                python.append((b.where, b.code))
        if python:
            (tmp_path / "blocks.json").write_text(json.dumps(python))
            out = subprocess.run([sys.executable, "-c", RUNNER, str(tmp_path / "blocks.json")], cwd=project,
                                 env=env, capture_output=True, text=True, timeout=240)
            assert out.returncode == 0 and "ran" in out.stdout, (
                f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}\n--- processes ---\n"
                f"{log.read_text()[-3000:] if log.exists() else ''}")
        for b in runnable:
            if b.lang == "sh":
                for cmd in _commands(b.code):
                    _run_shell(cmd, b.where, project, env, log)
    finally:
        for p in procs:
            _stop(p)


def test_markers_are_used_as_documented():
    """Every doc parses: markers known, skips give a reason, and something is run."""
    total = skipped = 0
    for path in DOCS:
        blocks, _ = parse(path)
        total += sum(1 for b in blocks if b.lang)
        skipped += sum(1 for b in blocks if b.lang and b.skip)
    assert total > 40 and skipped <= total // 3, (total, skipped)


def test_commands_are_in_shell_blocks():
    """A command line in an unlabelled or text block would never be run: label it ```sh
    (output that shows a prompt, ``$ fastq ...``, is fine)."""
    for path in DOCS:
        for b in parse(path)[0]:
            if b.lang != "sh":
                bad = [ln for ln in b.code.splitlines() if re.match(r"(fastq|pip|python|pytest) ", ln)]
                assert not bad, f"{b.where}: commands outside a ```sh block: {bad}"
