"""Take Celery 5.7.0's integration tests from its sdist and rewrite their import lines.

``prepare(dest)`` lays out, under ``dest``::

    pytest.ini                      our settings (markers, no cache)
    compat_app.py                   the session app the `fastq worker` subprocess loads
    t/__init__.py, t/canvas_helpers.py
    t/integration/__init__.py, tasks.py, test_{canvas,tasks,inspect,worker}.py
    t/integration/conftest.py       ours (tests/celery_compat/session_app.py), not Celery's

Only import statements are changed (``IMPORTS`` says to what); each rewritten
statement keeps its line span, so Celery's line numbers stay valid in tracebacks.
Run the tests with ``python -m tests.celery_compat.run`` (see run.py).
"""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

CELERY_VERSION = "5.7.0"
SDIST = f"celery-{CELERY_VERSION}.tar.gz"
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("FASTQ_CELERY_COMPAT_CACHE", Path.home() / ".cache" / "fastq-celery-compat"))

#: Celery's files we run, relative to the sdist's top directory.
FILES = ["t/__init__.py", "t/canvas_helpers.py", "t/integration/__init__.py", "t/integration/tasks.py",
         "t/integration/test_canvas.py", "t/integration/test_tasks.py", "t/integration/test_inspect.py",
         "t/integration/test_worker.py"]

SHIM = "tests.celery_compat.shim"

# What each imported Celery name becomes. A value is one of:
#   ("fastq.module", "name")         fastq's equivalent
#   ("missing", None)                 a Celery feature fastq lacks: shim.missing placeholder
#   ("missing-decorator", None)       the same, for a decorator factory used at import time
#   ("celery-only", None)             a Celery internal: shim.celery_only placeholder
#   ("celery-only-decorator", None)
#   ("shim", "name")                  a test-harness stand-in in shim.py
#   ("module", "fastq.x")             a module
IMPORTS: dict[tuple[str, str], tuple[str, str | None]] = {
    # celery
    ("celery", "chain"): ("fastq", "chain"),
    ("celery", "chord"): ("fastq", "chord"),
    ("celery", "group"): ("fastq", "group"),
    ("celery", "signature"): ("fastq", "signature"),
    ("celery", "Signature"): ("fastq", "Signature"),
    ("celery", "Task"): ("fastq", "Task"),
    ("celery", "shared_task"): ("fastq", "shared_task"),  # takes every option tasks.py uses (typing=, pydantic=)
    ("celery", "states"): ("module", "fastq.states"),
    ("celery", "signals"): ("module", "fastq.signals"),
    ("celery", "Celery"): ("fastq", "FastQ"),
    ("celery", "uuid"): ("shim", "uuid"),
    ("celery", "_state"): ("celery-only", None),
    # celery.canvas
    ("celery.canvas", "signature"): ("fastq.canvas", "signature"),
    ("celery.canvas", "_chain"): ("fastq.canvas", "chain"),
    ("celery.canvas", "StampingVisitor"): ("fastq.canvas", "StampingVisitor"),
    # celery.exceptions
    ("celery.exceptions", "ChordError"): ("fastq.exceptions", "ChordError"),
    ("celery.exceptions", "Ignore"): ("fastq.exceptions", "Ignore"),
    ("celery.exceptions", "Retry"): ("fastq.exceptions", "Retry"),
    ("celery.exceptions", "TaskRevokedError"): ("fastq.exceptions", "TaskRevokedError"),
    ("celery.exceptions", "ImproperlyConfigured"): ("fastq.exceptions", "ImproperlyConfigured"),
    ("celery.exceptions", "TimeoutError"): ("fastq.exceptions", "TimeoutError"),
    ("celery.exceptions", "Reject"): ("fastq.exceptions", "Reject"),
    ("celery.exceptions", "SoftTimeLimitExceeded"): ("fastq.exceptions", "SoftTimeLimitExceeded"),
    # celery.result
    ("celery.result", "AsyncResult"): ("fastq.result", "AsyncResult"),
    ("celery.result", "GroupResult"): ("fastq.result", "GroupResult"),
    ("celery.result", "ResultSet"): ("fastq.result", "ResultSet"),
    # celery.signals
    ("celery.signals", "before_task_publish"): ("fastq.signals", "before_task_publish"),
    ("celery.signals", "task_received"): ("fastq.signals", "task_received"),
    # logging
    ("celery.utils.log", "get_task_logger"): ("fastq", "get_task_logger"),
    # remote-control command registration (used at tasks.py's import by pidbox tests)
    ("celery.worker.control", "control_command"): ("celery-only-decorator", None),
    ("celery.worker.control", "inspect_command"): ("celery-only-decorator", None),
    ("celery.worker.control", "add_consumer"): ("celery-only", None),
    ("celery.worker.control", "cancel_consumer"): ("celery-only", None),
    # Celery internals
    ("celery.backends.base", "BaseKeyValueStoreBackend"): ("celery-only", None),
    ("celery.backends.base", "states"): ("module", "fastq.states"),
    ("celery.worker", "state"): ("celery-only", None),
    ("celery.utils.serialization", "UnpickleableExceptionWrapper"): ("celery-only", None),
    ("celery.utils.sysinfo", "cpu_budget"): ("celery-only", None),
    ("celery.app", "trace"): ("celery-only", None),
    ("celery.fixups.django", "DjangoFixup"): ("celery-only", None),
    ("celery.fixups.django", "DjangoWorkerFixup"): ("celery-only", None),
    ("celery.contrib.django.task", "DjangoTask"): ("celery-only", None),
    ("celery.utils.dispatch", "Signal"): ("celery-only", None),
    # test-harness helpers
    ("celery.utils.nodenames", "anon_nodename"): ("shim", "anon_nodename"),
}

#: ``import X [as Y]`` statements: X -> what is imported instead (bound to the same name).
MODULE_IMPORTS = {"celery": "fastq", "billiard": "multiprocessing"}


class UnmappedImportError(Exception):
    pass


def _fastq_has(module: str, name: str | None) -> bool:
    try:
        return hasattr(importlib.import_module(module), name or "")
    except ImportError:
        return False


def _from_import(node: ast.ImportFrom, path: str) -> list[str]:
    module = node.module or ""
    out = []
    for alias in node.names:
        bound = alias.asname or alias.name
        key = (module, alias.name)
        if key not in IMPORTS:
            raise UnmappedImportError(f"{path}:{node.lineno}: from {module} import {alias.name}: not in IMPORTS")
        kind, target = IMPORTS[key]
        if kind.startswith("fastq") and not _fastq_has(kind, target):
            kind = "missing"  # mapped, but this fastq does not have it (yet)
        celery_name = f"{module}.{alias.name}"
        if kind == "module":
            out.append(f"import {target} as {bound}")
        elif kind == "shim":
            out.append(f"from {SHIM} import {target} as {bound}")
        elif kind in ("missing", "missing-decorator", "celery-only", "celery-only-decorator"):
            factory = "missing" if kind.startswith("missing") else "celery_only"
            deco = ", decorator_factory=True" if kind.endswith("decorator") else ""
            out.append(f"from {SHIM} import {factory} as _compat_{factory}")
            out.append(f"{bound} = _compat_{factory}({celery_name!r}{deco})")
        else:
            out.append(f"from {kind} import {target} as {bound}" if target != bound else f"from {kind} import {target}")
    return out


def rewrite(source: str, path: str = "<celery>") -> tuple[str, list[tuple[str, str]]]:
    """Rewrite the Celery import statements of ``source``; return it and (old, new) pairs."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    changes: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        new: list[str] | None = None
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if top == "celery":
                new = _from_import(node, path)
            elif node.module == "t.integration.tasks" or node.module == "t.canvas_helpers":
                new = None  # Celery's own test modules, laid out under the same names
        elif isinstance(node, ast.Import):
            stmts = []
            touched = False
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in MODULE_IMPORTS:
                    if alias.name != top:
                        raise UnmappedImportError(f"{path}:{node.lineno}: import {alias.name}")
                    touched = True
                    stmts.append(f"import {MODULE_IMPORTS[top]} as {alias.asname or alias.name}")
                else:
                    stmts.append(f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
            new = stmts if touched else None
        if new is not None:
            changes.append((node.lineno, node.end_lineno or node.lineno, "; ".join(new)))
    pairs = []
    for start, end, new in sorted(changes, reverse=True):
        old = "".join(lines[start - 1:end])
        indent = old[: len(old) - len(old.lstrip())]
        span = end - start + 1
        lines[start - 1:end] = [indent + new + "\n"] + ["\n"] * (span - 1)  # same line count
        pairs.append((old.strip(), new))
    return "".join(lines), pairs[::-1]


def sdist_path() -> Path:
    """Celery's sdist, downloaded once into CACHE (``pip download``, pinned)."""
    path = CACHE / SDIST
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"celery=={CELERY_VERSION}", "-d", str(CACHE)], check=True)
    return path


PYTEST_INI = """\
[pytest]
# Celery's integration tests, rewritten for fastq (tests/celery_compat/harness.py);
# Celery's own pytest settings (its pyproject.toml), without the cache.
addopts = --strict-markers -p no:cacheprovider -p no:timeout
python_classes = test_*
xfail_strict = true
markers =
    sleepdeprived_patched_module
    masked_modules
    patched_environ
    patched_module
    flaky: Celery's pytest-rerunfailures mark (no reruns here)
    amqp
    timeout: Celery's pytest-timeout mark; the conftest's own per-test timeout reads it
"""

COMPAT_APP = """\
# The session app the `fastq worker` subprocess loads (tests/celery_compat/session_app.py).
from tests.celery_compat.session_app import make_session_app

app = make_session_app()
"""


def prepare(dest: Path) -> list[tuple[str, str, str]]:
    """Lay Celery's rewritten tests out under ``dest``; return (file, old, new) for each rewritten import."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    top = f"celery-{CELERY_VERSION}/"
    log = []
    with tarfile.open(sdist_path()) as tar:
        for rel in FILES:
            member = tar.extractfile(top + rel)
            if member is None:
                raise FileNotFoundError(f"{rel} not in {SDIST}")
            source = member.read().decode()
            if rel.endswith("conftest.py"):
                continue
            new, pairs = rewrite(source, rel)
            log.extend((rel, old, n) for old, n in pairs)
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(new)
    shutil.copy(HERE / "celery_conftest.py", dest / "t" / "integration" / "conftest.py")
    (dest / "pytest.ini").write_text(PYTEST_INI)
    (dest / "compat_app.py").write_text(COMPAT_APP)
    (dest / "IMPORTS.txt").write_text("".join(f"{f}: {o!r}\n    -> {n}\n" for f, o, n in log))
    return log
