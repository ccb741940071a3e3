"""An app with signal receivers connected, as an integration (Sentry, OTel) would."""



from tests.apps.ledger import ledger

from fastq import FastQ
from fastq.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_received,
    task_retry,
    task_success,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

app = FastQ("signals")




@app.task(name="signals.ok")
def ok(x):
    return x * 2


@app.task(name="signals.bad")
def bad():
    raise RuntimeError("bad on purpose")


@app.task(name="signals.again", bind=True, max_retries=1)
def again(self):
    if self.request.retries == 0:
        raise self.retry(countdown=0.1)
    return "second try"


@task_received.connect
def _received(sender=None, request=None, **kw):
    ledger().rpush("sig", f"received:{request.task}:{request.id}")


@task_prerun.connect
def _prerun(sender=None, task_id=None, **kw):
    ledger().rpush("sig", f"prerun:{sender.name}:{task_id}")


@task_postrun.connect
def _postrun(sender=None, task_id=None, state=None, **kw):
    ledger().rpush("sig", f"postrun:{sender.name}:{state}")


@task_success.connect
def _success(sender=None, result=None, **kw):
    ledger().rpush("sig", f"success:{sender.name}:{result}")


@task_failure.connect
def _failure(sender=None, exception=None, **kw):
    ledger().rpush("sig", f"failure:{sender.name}:{type(exception).__name__}")


@task_retry.connect
def _retry(sender=None, **kw):
    ledger().rpush("sig", f"retry:{sender.name}")


@worker_ready.connect
def _ready(sender=None, **kw):
    ledger().rpush("sig", "worker_ready")


@worker_shutdown.connect
def _shutdown(sender=None, **kw):
    ledger().rpush("sig", "worker_shutdown")


@worker_process_init.connect
def _process_init(sender=None, **kw):
    ledger().rpush("sig", "worker_process_init")
