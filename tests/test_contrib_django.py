"""fastq.contrib.django with a real Django: settings read from settings.py (FASTQ_
namespace), tasks found in installed apps, and delay_on_commit() against a real
SQLite transaction (commit: sent; rollback: nothing sent)."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

if not os.environ.get("CI"):  # in CI a missing dependency must fail, not skip
    pytest.importorskip("django", reason="pip install django (the contrib-test extra)")

from fastq.testing import queue_pending, start_worker

SETTINGS = """
import os
SECRET_KEY = "not secret: tests"
INSTALLED_APPS = ["shop", "nothing_here"]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {db!r}}}}}
USE_TZ = True
FASTQ_BROKER_URL = os.environ["FASTQ_BROKER_URL"]
FASTQ_TASK_DEFAULT_QUEUE = "django"
FASTQ_RESULT_EXPIRES = 600
"""

PROJECT = """
from fastq import FastQ
from fastq.contrib.django import DjangoTask

app = FastQ("djproj")
app.Task = DjangoTask
app.config_from_object("django.conf:settings", namespace="FASTQ")
"""

SHOP_TASKS = """
from django.db import connection
from djproj import app

@app.task(name="shop.ship")
def ship(order_id):
    # the row the view wrote must be there: the task was sent after the commit
    with connection.cursor() as c:
        c.execute("SELECT item FROM orders WHERE id = %s", [order_id])
        row = c.fetchone()
    return row[0] if row else None
"""


@pytest.fixture(scope="module")
def django_project(tmp_path_factory):
    import django

    root = tmp_path_factory.mktemp("djproj")
    (root / "djsettings.py").write_text(SETTINGS.format(db=str(root / "db.sqlite3")))
    (root / "djproj.py").write_text(PROJECT)
    (root / "shop").mkdir()
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "tasks.py").write_text(textwrap.dedent(SHOP_TASKS))
    (root / "nothing_here").mkdir()
    (root / "nothing_here" / "__init__.py").write_text("")
    sys.path.insert(0, str(root))
    os.environ["DJANGO_SETTINGS_MODULE"] = "djsettings"
    django.setup()
    from django.db import connection

    with connection.cursor() as c:
        c.execute("CREATE TABLE orders (id integer PRIMARY KEY, item text)")
    import djproj

    yield djproj.app
    sys.path.remove(str(root))


@pytest.fixture
def dj(django_project, redis_url):
    from fastq.contrib.django import autodiscover_tasks

    assert autodiscover_tasks() == ["shop.tasks"]  # nothing_here has no tasks module
    django_project._reset()
    return django_project


def test_settings_come_from_django_settings(dj, redis_url):
    assert dj.conf.broker_url == redis_url
    assert dj.conf.task_default_queue == "django" and dj.conf.result_expires == 600
    assert "secret_key" not in dj.conf and "installed_apps" not in dj.conf


def test_delay_on_commit_sends_after_the_commit(dj):
    from django.db import connection, transaction

    ship = dj.tasks["shop.ship"]
    with transaction.atomic():
        with connection.cursor() as c:
            c.execute("INSERT INTO orders (id, item) VALUES (1, 'teapot')")
        r = ship.delay_on_commit(1)
        # not sent while the transaction is open
        assert queue_pending(dj, ["django"]) == {"django": 0}
    assert queue_pending(dj, ["django"]) == {"django": 1}
    with start_worker(dj):
        assert r.get(timeout=30) == "teapot"  # the id returned at the call is the task's


def test_rollback_sends_nothing(dj):
    from django.db import connection, transaction

    ship = dj.tasks["shop.ship"]
    with pytest.raises(RuntimeError), transaction.atomic():
        with connection.cursor() as c:
            c.execute("INSERT INTO orders (id, item) VALUES (2, 'kettle')")
        r = ship.delay_on_commit(2)
        raise RuntimeError("payment declined")
    # A savepoint rolled back inside a transaction that commits: its task is dropped too
    with transaction.atomic():
        try:
            with transaction.atomic():
                ship.apply_async_on_commit((3,), queue="django", countdown=0)
                raise ValueError("inner")
        except ValueError:
            pass
        kept = ship.apply_async_on_commit((1,), priority=5)
    assert queue_pending(dj, ["django"]) == {"django": 1}
    with start_worker(dj):
        assert kept.get(timeout=30) == "teapot"
    assert r.state == "PENDING"  # never sent


def test_outside_a_transaction_it_sends_at_once(dj):
    r = dj.tasks["shop.ship"].delay_on_commit(99)
    assert queue_pending(dj, ["django"]) == {"django": 1}
    with start_worker(dj):
        assert r.get(timeout=30) is None
