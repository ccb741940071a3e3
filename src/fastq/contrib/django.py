"""Django: send tasks when the transaction commits, settings from ``settings.py``,
and task discovery in the installed apps.

``proj/fastq.py``::

    import os
    from fastq import FastQ
    from fastq.contrib.django import DjangoTask

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    app = FastQ("proj")
    app.Task = DjangoTask  # every task gets delay_on_commit()
    app.config_from_object("django.conf:settings", namespace="FASTQ")  # FASTQ_BROKER_URL, ...

and in a view::

    with transaction.atomic():
        order = Order.objects.create(...)
        send_receipt.delay_on_commit(order.pk)  # sent only if the transaction commits

``autodiscover_tasks()`` imports ``<app>.tasks`` of every installed app (call it
once Django is set up: in an ``AppConfig.ready()``, or in the worker's app module
after ``django.setup()``).

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from django.db import transaction

from .._speedups import new_task_id
from ..result import AsyncResult
from ..task import Task

__all__ = ["DjangoTask", "autodiscover_tasks"]


class DjangoTask(Task):
    """A task that can wait for the surrounding database transaction.

    ``delay_on_commit()`` and ``apply_async_on_commit()`` send the task in
    ``transaction.on_commit``: after the transaction commits, never when it
    rolls back (so the worker never looks for a row that does not exist yet),
    and at once outside a transaction. They return the task's AsyncResult at
    once (its id is chosen now, so it can be saved in the same transaction); after
    a rollback that result stays PENDING forever."""

    def delay_on_commit(self, *args: Any, **kwargs: Any):
        """``delay()`` once the current transaction (default database) commits."""
        return self.apply_async_on_commit(args, kwargs)

    def apply_async_on_commit(self, args: Iterable | None = None, kwargs: dict | None = None, using: str | None = None,
                              **options: Any):
        """``apply_async()`` once the transaction of database ``using`` commits."""
        task_id = options.pop("task_id", None) or new_task_id()
        args = tuple(args or ())
        kwargs = dict(kwargs or {})

        def send() -> None:
            self.apply_async(args, kwargs, task_id=task_id, **options)

        transaction.on_commit(send, using=using)
        return AsyncResult(task_id, app=self.app, task_name=self.name)


def autodiscover_tasks(apps: Iterable[str] | None = None, related_name: str = "tasks") -> list[str]:
    """Import ``<app>.<related_name>`` for each Django app (default: INSTALLED_APPS)
    that has one; return the modules imported. An error inside such a module is raised."""
    if apps is None:
        from django.apps import apps as registry  # optional: this module is for Django projects

        apps = [cfg.name for cfg in registry.get_app_configs()]
    found = []
    for name in apps:
        module = f"{name}.{related_name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name in (module, name):  # the app has no tasks module: fine
                continue
            raise
        found.append(module)
    return found
