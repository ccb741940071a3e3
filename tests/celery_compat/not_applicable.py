"""Celery's integration tests that cannot apply to fastq, whatever fastq implements:
they test Celery internals (kombu pub/sub channel names, backend classes, the
in-process worker's state, Celery's CLI, the Django fixup, pidbox control
commands). Skipped as "not applicable: <reason>" and left out of the pass rate.

Keys are pytest node ids in the prepared directory (parameters stripped: a key
covers every parametrization).
"""

from __future__ import annotations

_KV = "needs Celery's BaseKeyValueStoreBackend class (isinstance check / monkeypatching its _apply_chord_incr)"
_CHANNELS = "counts Celery's Redis-backend pub/sub channels (PUBSUB CHANNELS names kombu/Celery subscribe)"
_WSTATE = ("reads the in-process worker's celery.worker.state (Celery's test worker runs in the test process; "
           "fastq's is a `fastq worker` subprocess)")
_STAMPS = ("clears the in-process worker's celery.worker.state.revoked_stamps between its cases (fastq's "
           "revoke_by_stamped_headers is tested on real workers in tests/test_stamping.py)")
_REVOKED_CLOCK = ("reads the in-process worker's celery.worker.state.revoked and the local monotonic time stamps "
                  "it keeps per id (fastq keeps revokes in Redis with an expiry time)")
_SIGNAL_STAMPS = ("checks the stamps only in a task_received receiver connected in the test process, which fires "
                  "in Celery's in-process test worker but not in a `fastq worker` subprocess, so it would pass or "
                  "fail without looking at the stamps; tests/test_stamping.py checks the same stamps as each task "
                  "runs on a real worker")
_SIGNAL_HERE = ("connects task_received in the test process and expects it to fire there: Celery's test worker "
                "runs in that process, fastq's is a `fastq worker` subprocess (its own signals, tested in tests/test_signals.py)")
_PICKLE = "catches celery.utils.serialization.UnpickleableExceptionWrapper, the wrapper of Celery's pickle serializer"
_DJANGO = "Celery's Django fixup internals (celery.fixups.django, celery._state, celery.app.trace)"
_CAPLOG = ("reads the in-process worker's log records (caplog) under Celery's logger names and celery.app.trace's "
           "format constants: fastq's worker logs in its own process")
_KOMBU = "monkeypatches kombu's producer channel (app.amqp.Producer().channel.basic_publish) and app.amqp's event buffer"

NOT_APPLICABLE: dict[str, str] = {
    # test_canvas.py
    "t/integration/test_canvas.py::test_result_set::test_join_native_timeout_zero_gives_up_on_pending_results": _KV,
    "t/integration/test_canvas.py::test_result_set::test_join_native_timeout_zero_returns_results_that_are_ready": _KV,
    "t/integration/test_canvas.py::test_chord::test_simple_chord_with_a_delay_in_group_save": _KV,
    "t/integration/test_canvas.py::test_chord::test_redis_subscribed_channels_leak": _CHANNELS,
    "t/integration/test_canvas.py::test_chord::test_chord_on_error":
        "reads Celery's Redis-backend chord keys (backend.get_key_for_group(group_id, '.j')) and the children of "
        "Celery's chord unlock task",
    "t/integration/test_canvas.py::test_stamping_mechanism::test_task_received_has_access_to_stamps": _SIGNAL_STAMPS,
    "t/integration/test_canvas.py::test_stamping_mechanism::test_all_tasks_of_canvas_are_stamped": _SIGNAL_STAMPS,
    "t/integration/test_canvas.py::test_stamping_mechanism::test_replace_merge_stamps": _SIGNAL_STAMPS,
    "t/integration/test_canvas.py::test_stamping_mechanism::test_linking_stamped_sig": _SIGNAL_STAMPS,
    "t/integration/test_canvas.py::test_stamping_mechanism::test_err_linking_stamped_sig": _SIGNAL_STAMPS,
    "t/integration/test_canvas.py::test_stamping_mechanism::test_stamps_remain_on_task_retry": _SIGNAL_STAMPS,
    # test_tasks.py
    "t/integration/test_tasks.py::test_signal_bound_method_receivers::test_each_instance_receives": _SIGNAL_HERE,
    "t/integration/test_tasks.py::test_signal_bound_method_receivers::test_disconnect_leaves_other_instance_connected":
        _SIGNAL_HERE,
    "t/integration/test_tasks.py::test_signal_bound_method_receivers::test_other_instance_receives_after_garbage_collection":
        _SIGNAL_HERE,
    "t/integration/test_tasks.py::test_task_replacement::test_replaced_task_nesting_level_0": _SIGNAL_HERE,
    "t/integration/test_tasks.py::test_task_replacement::test_replaced_task_nesting_level_1": _SIGNAL_HERE,
    "t/integration/test_tasks.py::test_task_replacement::test_replaced_task_nesting_chain": _SIGNAL_HERE,
    "t/integration/test_tasks.py::test_trace_log_arguments::test_task_success": _CAPLOG,
    "t/integration/test_tasks.py::test_trace_log_arguments::test_task_failed": _CAPLOG,
    "t/integration/test_tasks.py::test_tasks::test_task_sent_event_respects_publish_retry_limit": _KOMBU,
    "t/integration/test_tasks.py::test_tasks::test_retry":
        "counts tries on the task object (self.attempt), which needs every retry to run in the one process of "
        "Celery's in-process test worker; `fastq worker -c 4` (like Celery's prefork) may run each in another child",
    "t/integration/test_tasks.py::test_tasks::test_fail_with_unpickleable_exception": _PICKLE,
    "t/integration/test_tasks.py::test_tasks::test_send_task_without_ignore_result_uses_task_ignore_result": _WSTATE,
    "t/integration/test_tasks.py::test_tasks::test_send_task_without_ignore_result_stores_result": _WSTATE,
    "t/integration/test_tasks.py::test_task_redis_result_backend::test_retry_preserves_ignore_result_false": _WSTATE,
    "t/integration/test_tasks.py::test_task_redis_result_backend::test_retry_preserves_ignore_result_true": _WSTATE,
    "t/integration/test_tasks.py::test_tasks::test_revoked_by_headers_simple_canvas": _STAMPS,
    "t/integration/test_tasks.py::test_tasks::test_revoked_by_headers_complex_canvas": _STAMPS,
    "t/integration/test_tasks.py::test_task_redis_result_backend::test_ignoring_result_no_subscriptions": _CHANNELS,
    "t/integration/test_tasks.py::test_task_redis_result_backend::test_asyncresult_forget_cancels_subscription":
        _CHANNELS,
    "t/integration/test_tasks.py::test_task_redis_result_backend::test_asyncresult_get_cancels_subscription":
        _CHANNELS,
    # test_inspect.py
    "t/integration/test_inspect.py::test_Inspect::test_hello_stamps_received_revoked_ids_locally": _REVOKED_CLOCK,
    "t/integration/test_inspect.py::test_Inspect::test_stats":
        "expects Celery's test worker: in the test process (stats pid == os.getpid()) with one pool slot",
    "t/integration/test_inspect.py::test_Inspect::test_report":
        "expects the report to name the software Celery ('software -> celery:'); fastq's names fastq",
    # test_worker.py
    "t/integration/test_worker.py::test_run_worker":
        "runs Celery's own CLI (`celery --config t.integration.worker_config worker`) in a subprocess",
    "t/integration/test_worker.py::test_concurrency_auto_sizes_prefork_pool":
        "runs Celery's own CLI (`python -m celery worker -c auto`) and reads its log line",
    "t/integration/test_worker.py::test_django_fixup_direct_worker": _DJANGO,
    "t/integration/test_worker.py::test_django_fixup_installs_django_task_for_celery_subclass": _DJANGO,
    "t/integration/test_worker.py::test_django_fixup_signals_only_handled_by_own_app": _DJANGO,
    "t/integration/test_worker.py::test_pidbox_reset_after_repeated_control_errors":
        "registers a custom kombu pidbox command (celery.worker.control.control_command) and checks pidbox resets",
}
