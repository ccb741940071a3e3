"""docs/celery.md, the "Coming from Celery" guide (issue #22), maps every setting of
Celery's configuration reference.

The list of Celery's settings is read from the configuration reference in Celery's
pinned sdist (``docs/userguide/configuration.rst``: its ``.. setting::`` targets,
and the few settings documented by a heading only), downloaded once and cached by
``tests/celery_compat/harness.py``. Without network and without a cached sdist the
test fails: a guide checked against nothing would drift silently.

The guide's settings table has one row per Celery setting (or a few related ones),
``| `celery_name` | fastq's equivalent |``; a row whose second cell starts with
"same" claims fastq has the setting under the same name, which must then be in
``fastq.settings.DEFAULTS``, and a setting fastq has must be marked "same".
"""

from __future__ import annotations

import re
import subprocess
import tarfile

import pytest
from tests.celery_compat.harness import CELERY_VERSION, sdist_path

from conftest import ROOT
from fastq.settings import DEFAULTS

GUIDE = ROOT / "docs" / "celery.md"
CONFIG_RST = f"celery-{CELERY_VERSION}/docs/userguide/configuration.rst"
SETTINGS_SECTION = "## Settings"


def celery_settings() -> set[str]:
    """Every setting name Celery's configuration reference documents."""
    try:
        path = sdist_path()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"cannot get Celery {CELERY_VERSION}'s sdist to read its settings from (pip download "
                    f"--no-deps --no-binary :all: celery=={CELERY_VERSION}, cached by "
                    f"tests/celery_compat/harness.py): {exc}")
    with tarfile.open(path) as tar:
        member = tar.extractfile(CONFIG_RST)
        assert member is not None, f"{CONFIG_RST} is not in {path}"
        text = member.read().decode()
    names = set(re.findall(r"^\.\. setting:: (\w+)[ \t]*$", text, re.M))
    names |= set(re.findall(r"^``(\w+)``\n~{3,}[ \t]*$", text, re.M))  # gcs_ttl & co. have no target
    assert len(names) > 200, f"only {len(names)} settings read from {CONFIG_RST}: has its format changed?"
    return names


def guide_rows() -> dict[str, str]:
    """The settings table of docs/celery.md: each Celery name of a row's first cell -> the row's second cell."""
    text = GUIDE.read_text()
    assert SETTINGS_SECTION in text, f"docs/celery.md has no {SETTINGS_SECTION!r} section"
    section = text.split(SETTINGS_SECTION, 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) < 2 or set(cells[0]) <= set("-: "):
            continue
        for name in re.findall(r"`(\w+)`", cells[0]):
            assert name not in rows, f"docs/celery.md: setting {name!r} has two rows"
            rows[name] = cells[1]
    return rows


def test_every_celery_setting_is_in_the_guide():
    missing = sorted(celery_settings() - set(guide_rows()))
    assert not missing, (f"docs/celery.md's settings table lacks these settings of Celery {CELERY_VERSION} "
                         f"(give each a row: fastq's equivalent or why there is none): {', '.join(missing)}")


def test_same_name_rows_match_fastq_settings():
    rows = guide_rows()
    wrong = sorted(name for name, cell in rows.items() if cell.lower().startswith("same") and name not in DEFAULTS)
    assert not wrong, f"docs/celery.md says fastq has these settings, which fastq.settings.DEFAULTS lacks: {wrong}"
    unmarked = sorted(name for name, cell in rows.items() if name in DEFAULTS and not cell.lower().startswith("same"))
    assert not unmarked, f"fastq has these settings under Celery's name; mark their rows 'same': {unmarked}"
