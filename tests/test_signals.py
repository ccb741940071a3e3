"""fastq.signals fire in real workers, with the arguments integrations need."""

from conftest import wait_for
from fastq import FastQ


def _signals(ledger):
    return [x.decode() for x in ledger.lrange("sig", 0, -1)]


def test_task_signals_in_a_process_pool(redis_url, worker, ledger):
    # Given a worker whose app connects receivers to every signal
    w = worker("-c", "1", app="tests.apps.signalapp:app")
    app = FastQ("client", broker=redis_url)
    # When a task succeeds, one fails, and one retries once
    ok = app.send_task("signals.ok", args=(21,))
    bad = app.send_task("signals.bad")
    again = app.send_task("signals.again")
    assert ok.get(timeout=30) == 42
    bad.get(timeout=30, propagate=False)
    assert again.get(timeout=30) == "second try"
    seen = _signals(ledger)
    # Then each signal fired with the task and its outcome
    assert "worker_ready" in seen and "worker_process_init" in seen
    assert f"prerun:signals.ok:{ok.id}" in seen
    assert seen.index(f"received:signals.ok:{ok.id}") < seen.index(f"prerun:signals.ok:{ok.id}")
    assert "success:signals.ok:42" in seen
    assert "postrun:signals.ok:SUCCESS" in seen
    assert "failure:signals.bad:RuntimeError" in seen
    assert "postrun:signals.bad:FAILURE" in seen
    assert "retry:signals.again" in seen
    assert "success:signals.again:second try" in seen
    # And worker_shutdown fires on a warm shutdown
    w.stop()
    wait_for(lambda: "worker_shutdown" in _signals(ledger), 10, message="worker_shutdown")


def test_a_failing_receiver_does_not_break_the_task(redis_url, worker, ledger):
    from fastq.signals import task_success

    # Given a receiver that raises (connected in this process, used eagerly)
    def broken(**kw):
        raise ValueError("receiver bug")

    task_success.connect(broken)
    try:
        app = FastQ("local", broker=redis_url)
        add = app.task(name="local.add")(lambda x, y: x + y)
        # When the signal is sent, the error is logged, not raised
        assert task_success.send(sender=add, result=3)[0][1].__class__ is ValueError
    finally:
        task_success.disconnect(broken)
