"""The fastq app Celery's integration tests run on: what Celery's ``celery_config``
fixture describes (broker and results on the private Redis, ``result_extended``),
with every ``shared_task`` of Celery's t/integration/tasks.py on it. Its default
queue is Celery's default, ``celery`` (the tests' delivery_info and active_queues
name it; fastq's own default is ``default``).

The `fastq worker` subprocess loads it as ``compat_app:app``; the test process
makes one per test (``celery_app``), as Celery's pytest plugin does.
"""

from __future__ import annotations

import os

from fastq import FastQ


def make_app() -> FastQ:
    app = FastQ("celery", broker=os.environ["TEST_BROKER"], backend=os.environ["TEST_BACKEND"], result_extended=True,
                task_default_queue="celery")
    import t.integration.tasks as tasks  # registers its shared tasks on every app

    register = getattr(app, "register_task", None)  # Celery's celery_class_tasks fixture
    if register is not None:
        register(tasks.ClassBasedAutoRetryTask)
    return app


def make_session_app() -> FastQ:
    app = make_app()
    app.set_default()
    return app
