"""Celery 5.7.0's own integration tests, run against fastq (issue #22).

One test: it runs Celery's t/integration tests (test_canvas, test_tasks,
test_inspect, test_worker), with only their import lines rewritten, in a pytest
subprocess against one `fastq worker -c 4`, and checks the pass count does not
drop below the recorded floor and that the tests that pass today keep passing.
When fastq gets better, raise PASSED_FLOOR and add to KEEP_PASSING.

The table of outcomes (counts, failures by cause, each test) is written to
``<tmp_path>/results.md``; run ``python -m tests.celery_compat.run`` for it alone.
Needs network access once, to download Celery's sdist into
~/.cache/fastq-celery-compat (or $FASTQ_CELERY_COMPAT_CACHE).
"""

from __future__ import annotations

import os

import pytest
from tests.celery_compat import run

pytestmark = [pytest.mark.slow, pytest.mark.celery, pytest.mark.timeout(600)]

#: Per-test timeout inside the run: Celery's tests wait up to their own TIMEOUT on failure.
#: 10 s keeps the whole run near 5.5 min (the CI budget is 6); the few Celery tests that
#: wait 10 s by design (an eta of 10 s, "not called within 10 s" checks) fail under it.
PER_TEST_TIMEOUT = float(os.environ.get("CELERY_COMPAT_TIMEOUT", "10"))

#: Measured passes minus 3 or 4 for flakiness (the floor only ratchets up).
#: 2026-12 (stop 27): 208 passed of 302 applicable in two consecutive full runs (the same 208).
#: 2026-12 (stop 28): 255 and 256 passed of 290 and 289 applicable (88.6%) in two consecutive runs.
#: 2026-12 (stop 29): 265 and 265 passed of 282 applicable (94.0%) in two consecutive runs.
PASSED_FLOOR = 261

#: Tests that passed in two consecutive full runs and cover what fastq fixed for them:
#: errbacks (new-style, chord errbacks, link_error), Task.replace, nested groups and
#: chains, chord header errbacks, ChordError, typing=/pydantic= and inspect replies;
#: (stop 28) as_tuple and parent ids, empty steps, generator headers (the sizes well
#: under the per-test timeout), retry(args=/kwargs=), Reject(requeue=True), group
#: bodies' errbacks and links, re-applied frozen chords, replacement nesting; (stop 29)
#: stamping and revoke_by_stamped_headers.
#: A regression in any of them fails this test.
KEEP_PASSING: set[str] = {
    "t/integration/test_canvas.py::test_chain::test_chain_forwards_args_past_leading_empty_steps",
    "t/integration/test_canvas.py::test_chain::test_chain_of_group_followed_by_empty_groups",
    "t/integration/test_canvas.py::test_chain::test_chain_of_nine_implicit_chords",
    "t/integration/test_canvas.py::test_chain::test_chain_of_two_groups_as_tuple_holds_each_task_once[False]",
    "t/integration/test_canvas.py::test_chain::test_chain_of_two_groups_as_tuple_holds_each_task_once[True]",
    "t/integration/test_canvas.py::test_chain::test_chain_skips_empty_groups_before_chord_body",
    "t/integration/test_canvas.py::test_chain::test_chord_with_chain_body_with_task_id",
    "t/integration/test_canvas.py::test_chain::test_group_in_center_of_chain",
    "t/integration/test_canvas.py::test_chain::test_group_results_in_chain",
    "t/integration/test_canvas.py::test_chain::test_groupresult_serialization",
    "t/integration/test_canvas.py::test_chain::test_parent_ids",
    "t/integration/test_canvas.py::test_chord::test_chain_of_implicit_chords_as_body[False-False]",
    "t/integration/test_canvas.py::test_chord::test_chain_of_implicit_chords_as_body[True-False]",
    "t/integration/test_canvas.py::test_chord::test_chain_of_implicit_chords_body_failure[body]",
    "t/integration/test_canvas.py::test_chord::test_chain_of_implicit_chords_body_failure[header]",
    "t/integration/test_canvas.py::test_chord::test_chord_header_with_empty_chains",
    "t/integration/test_canvas.py::test_chord::test_empty_header_chord",
    "t/integration/test_canvas.py::test_chord::test_errbacks_of_chord_in_group_body_run_on_header_failure[method]",
    "t/integration/test_canvas.py::test_chord::test_errbacks_of_chord_in_group_body_run_on_header_failure[option]",
    "t/integration/test_canvas.py::test_chord::test_errbacks_of_group_body_tasks_run_on_header_failure[method]",
    "t/integration/test_canvas.py::test_chord::test_errbacks_of_group_body_tasks_run_on_header_failure[option]",
    "t/integration/test_canvas.py::test_chord::test_generator[3]",
    "t/integration/test_canvas.py::test_chord::test_generator[4]",
    "t/integration/test_canvas.py::test_chord::test_generator[5]",
    "t/integration/test_canvas.py::test_chord::test_link_error_option_runs_on_header_failure[group]",
    "t/integration/test_canvas.py::test_chord::test_link_option_on_group_body_runs_once",
    "t/integration/test_canvas.py::test_chord::test_parent_ids",
    "t/integration/test_canvas.py::test_chord::test_parent_ids__OR",
    "t/integration/test_canvas.py::test_chord::test_parent_ids__plain_task_body",
    "t/integration/test_canvas.py::test_chord::test_reapplying_frozen_chord_dispatches_body_again",
    "t/integration/test_canvas.py::test_group::test_empty_group_result",
    "t/integration/test_canvas.py::test_group::test_generator_group_iterated_while_calling_len",
    "t/integration/test_canvas.py::test_group::test_group_with_empty_chain_members",
    "t/integration/test_canvas.py::test_group::test_parent_ids",
    "t/integration/test_canvas.py::test_xmap_xstarmap::test_starmap_in_a_group_and_a_chain",
    "t/integration/test_inspect.py::test_Inspect::test_active",
    "t/integration/test_inspect.py::test_Inspect::test_active_queues",
    "t/integration/test_inspect.py::test_Inspect::test_query_task",
    "t/integration/test_tasks.py::test_task_replacement::test_replaced_task_nesting_increments[0]",
    "t/integration/test_tasks.py::test_task_replacement::test_replaced_task_nesting_increments[1]",
    "t/integration/test_tasks.py::test_task_replacement::test_replaced_task_nesting_increments[3]",
    "t/integration/test_tasks.py::test_tasks::test_properties",
    "t/integration/test_tasks.py::test_tasks::test_reject_with_requeue_redelivers_and_succeeds",
    "t/integration/test_tasks.py::test_tasks::test_retry_switches_from_args_to_kwargs",
    "t/integration/test_tasks.py::test_tasks::test_retry_switches_from_kwargs_to_args",
    "t/integration/test_canvas.py::test_chain::test_chain_child_replaced_with_chain_first",
    "t/integration/test_canvas.py::test_chain::test_chain_child_replaced_with_chain_last",
    "t/integration/test_canvas.py::test_chain::test_chain_child_replaced_with_chain_middle",
    "t/integration/test_canvas.py::test_chain::test_chain_child_with_callback_replaced",
    "t/integration/test_canvas.py::test_chain::test_chain_child_with_errback_replaced",
    "t/integration/test_canvas.py::test_chain::test_chain_children_with_errbacks",
    "t/integration/test_canvas.py::test_chain::test_chain_on_error",
    "t/integration/test_canvas.py::test_chain::test_chain_with_a_nested_chain_led_by_a_group",
    "t/integration/test_canvas.py::test_chain::test_chain_with_callback_child_replaced",
    "t/integration/test_canvas.py::test_chain::test_chain_with_errback_child_replaced",
    "t/integration/test_canvas.py::test_chain::test_complex_chain",
    "t/integration/test_canvas.py::test_chain::test_nested_chain_group_last",
    "t/integration/test_canvas.py::test_chain::test_nested_chain_group_lone",
    "t/integration/test_canvas.py::test_chain::test_nested_chain_group_mid",
    "t/integration/test_canvas.py::test_chain::test_replace_chain_with_empty_chain",
    "t/integration/test_canvas.py::test_chain::test_replace_with_chain_that_contains_a_group",
    "t/integration/test_canvas.py::test_chain::test_second_order_replace",
    "t/integration/test_canvas.py::test_chain::test_task_replaced_with_chain",
    "t/integration/test_canvas.py::test_chain::test_task_with_callback_replaced_with_chain",
    "t/integration/test_canvas.py::test_chord::test_chord_body_chain_child_replaced_with_chain_first",
    "t/integration/test_canvas.py::test_chord::test_chord_body_chain_child_replaced_with_chain_last",
    "t/integration/test_canvas.py::test_chord::test_chord_body_chain_child_replaced_with_chain_middle",
    "t/integration/test_canvas.py::test_chord::test_chord_body_task_replaced_with_chain",
    "t/integration/test_canvas.py::test_chord::test_chord_error_in_nested_chain_does_not_crash",
    "t/integration/test_canvas.py::test_chord::test_chord_error_propagation_with_different_body_types[body is a chain]",
    "t/integration/test_canvas.py::test_chord::test_chord_error_propagation_with_different_body_types[body is a chord]",
    "t/integration/test_canvas.py::test_chord::test_chord_error_propagation_with_different_body_types[body is a group]",
    "t/integration/test_canvas.py::test_chord::test_chord_error_propagation_with_different_body_types[body is a single_task]",
    "t/integration/test_canvas.py::test_chord::test_chord_header_child_replaced_with_chain_first",
    "t/integration/test_canvas.py::test_chord::test_chord_header_child_replaced_with_chain_last",
    "t/integration/test_canvas.py::test_chord::test_chord_header_child_replaced_with_chain_middle",
    "t/integration/test_canvas.py::test_chord::test_chord_header_task_replaced_with_chain",
    "t/integration/test_canvas.py::test_chord::test_chord_unlock_with_failed_task_in_nested_chain_member",
    "t/integration/test_canvas.py::test_chord::test_errback_set_as_one_signature_runs_on_header_failure",
    "t/integration/test_canvas.py::test_chord::test_immutable_errback_called_by_chord_from_chain",
    "t/integration/test_canvas.py::test_chord::test_immutable_errback_called_by_chord_from_chain_tail",
    "t/integration/test_canvas.py::test_chord::test_immutable_errback_called_by_chord_from_group",
    "t/integration/test_canvas.py::test_chord::test_immutable_errback_called_by_chord_from_group_fail_multiple",
    "t/integration/test_canvas.py::test_chord::test_immutable_errback_called_by_chord_from_simple",
    "t/integration/test_canvas.py::test_chord::test_link_error_option_keeps_errbacks_of_group_body_tasks",
    "t/integration/test_canvas.py::test_chord::test_link_error_option_runs_on_body_failure",
    "t/integration/test_canvas.py::test_chord::test_link_error_option_runs_on_header_failure[chord]",
    "t/integration/test_canvas.py::test_chord::test_link_error_option_runs_once_for_chord_in_group_body_with_link_error",
    "t/integration/test_canvas.py::test_chord::test_link_error_option_with_link_error_of_group_body",
    "t/integration/test_canvas.py::test_chord::test_mutable_errback_called_by_chord_from_chain[errback_new_style]",
    "t/integration/test_canvas.py::test_chord::test_mutable_errback_called_by_chord_from_chain[errback_old_style]",
    "t/integration/test_canvas.py::test_chord::test_mutable_errback_called_by_chord_from_chain_tail[errback_new_style]",
    "t/integration/test_canvas.py::test_chord::test_mutable_errback_called_by_chord_from_chain_tail[errback_old_style]",
    "t/integration/test_canvas.py::test_chord::test_mutable_errback_called_by_chord_from_group[errback_new_style]",
    "t/integration/test_canvas.py::test_chord::test_mutable_errback_called_by_chord_from_group[errback_old_style]",
    "t/integration/test_canvas.py::test_chord::test_mutable_errback_called_by_chord_from_group_fail_multiple_on_body_failure[errback_new_style]",
    "t/integration/test_canvas.py::test_chord::test_mutable_errback_called_by_chord_from_group_fail_multiple_on_body_failure[errback_old_style]",
    "t/integration/test_canvas.py::test_chord::test_mutable_errback_called_by_chord_from_group_fail_multiple_on_header_failure[errback_new_style]",
    "t/integration/test_canvas.py::test_chord::test_mutable_errback_called_by_chord_from_group_fail_multiple_on_header_failure[errback_old_style]",
    "t/integration/test_canvas.py::test_chord::test_mutable_errback_called_by_chord_from_simple[errback_new_style]",
    "t/integration/test_canvas.py::test_chord::test_mutable_errback_called_by_chord_from_simple[errback_old_style]",
    "t/integration/test_canvas.py::test_chord::test_nested_chord",
    "t/integration/test_canvas.py::test_chord::test_nested_chord_group",
    "t/integration/test_canvas.py::test_chord::test_nested_chord_group_chain_group_tail",
    "t/integration/test_canvas.py::test_chord::test_nested_group_chain",
    "t/integration/test_canvas.py::test_chord::test_replaced_nested_chord",
    "t/integration/test_canvas.py::test_chord::test_upgraded_chord_link_error_with_header_errback_enabled",
    "t/integration/test_canvas.py::test_group::test_errback_called_by_group_fail_first",
    "t/integration/test_canvas.py::test_group::test_errback_called_by_group_fail_last",
    "t/integration/test_canvas.py::test_group::test_errback_called_by_group_fail_multiple",
    "t/integration/test_canvas.py::test_group::test_group_child_replaced_with_chain_first",
    "t/integration/test_canvas.py::test_group::test_group_child_replaced_with_chain_last",
    "t/integration/test_canvas.py::test_group::test_group_child_replaced_with_chain_middle",
    "t/integration/test_canvas.py::test_group::test_group_child_with_callback_replaced",
    "t/integration/test_canvas.py::test_group::test_group_child_with_callback_replaced_with_chain",
    "t/integration/test_canvas.py::test_group::test_group_child_with_errback_replaced",
    "t/integration/test_canvas.py::test_group::test_group_children_with_errbacks",
    "t/integration/test_canvas.py::test_group::test_group_with_callback_child_replaced",
    "t/integration/test_canvas.py::test_group::test_group_with_errback_child_replaced",
    "t/integration/test_canvas.py::test_group::test_mutable_errback_called_by_group[errback_new_style]",
    "t/integration/test_canvas.py::test_group::test_mutable_errback_called_by_group[errback_old_style]",
    "t/integration/test_canvas.py::test_group::test_nested_group",
    "t/integration/test_canvas.py::test_group::test_nested_group_chord_body_chain",
    "t/integration/test_canvas.py::test_group::test_nested_group_chord_counting_chain",
    "t/integration/test_canvas.py::test_group::test_nested_group_chord_counting_chord",
    "t/integration/test_canvas.py::test_group::test_nested_group_chord_counting_group",
    "t/integration/test_canvas.py::test_group::test_nested_group_chord_counting_mixed",
    "t/integration/test_canvas.py::test_group::test_nested_group_chord_counting_simple",
    "t/integration/test_canvas.py::test_group::test_nested_group_group",
    "t/integration/test_canvas.py::test_group::test_task_replace_with_group_preserves_group_order",
    "t/integration/test_canvas.py::test_link_error::test_link_error",
    "t/integration/test_canvas.py::test_link_error::test_link_error_callback_error_callback_retries_eager",
    "t/integration/test_canvas.py::test_link_error::test_link_error_callback_retries",
    "t/integration/test_canvas.py::test_link_error::test_link_error_eager",
    "t/integration/test_canvas.py::test_link_error::test_link_error_using_signature",
    "t/integration/test_canvas.py::test_link_error::test_link_error_using_signature_eager",
    "t/integration/test_canvas.py::test_link_error::test_mutable_errback_with_stored_arguments[new-style-args]",
    "t/integration/test_canvas.py::test_link_error::test_mutable_errback_with_stored_arguments[old-style-args]",
    "t/integration/test_canvas.py::test_link_error::test_mutable_errback_with_stored_arguments[old-style-kwargs]",
    "t/integration/test_canvas.py::test_signature_serialization::test_rebuild_nested_chain_chain",
    "t/integration/test_canvas.py::test_signature_serialization::test_rebuild_nested_chain_chord",
    "t/integration/test_canvas.py::test_signature_serialization::test_rebuild_nested_chain_group",
    "t/integration/test_canvas.py::test_signature_serialization::test_rebuild_nested_chord_chain",
    "t/integration/test_canvas.py::test_signature_serialization::test_rebuild_nested_chord_chord",
    "t/integration/test_canvas.py::test_signature_serialization::test_rebuild_nested_chord_group",
    "t/integration/test_canvas.py::test_signature_serialization::test_rebuild_nested_group_chain",
    "t/integration/test_canvas.py::test_signature_serialization::test_rebuild_nested_group_chord",
    "t/integration/test_canvas.py::test_signature_serialization::test_rebuild_nested_group_group",
    "t/integration/test_canvas.py::test_stamping_mechanism::test_properties_not_affected_from_stamping",
    "t/integration/test_canvas.py::test_stamping_mechanism::test_stamp_canvas_with_dictionary_link",
    "t/integration/test_canvas.py::test_stamping_mechanism::test_stamp_canvas_with_dictionary_link_error",
    "t/integration/test_canvas.py::test_stamping_mechanism::test_stamp_value_type_defined_by_visitor",
    "t/integration/test_canvas.py::test_stamping_mechanism::test_stamping_example_canvas",
    "t/integration/test_canvas.py::test_stamping_mechanism::test_stamping_workflow",
    "t/integration/test_inspect.py::test_Inspect::test_clock",
    "t/integration/test_inspect.py::test_Inspect::test_ping",
    "t/integration/test_inspect.py::test_Inspect::test_registered",
    "t/integration/test_inspect.py::test_Inspect::test_report_with_multiserver_result_backend",
    "t/integration/test_inspect.py::test_Inspect::test_revoked",
    "t/integration/test_tasks.py::test_apply_tasks::test_apply_nested_parent_child_relationship",
    "t/integration/test_tasks.py::test_tasks::test_pydantic_annotations",
    "t/integration/test_tasks.py::test_tasks::test_pydantic_model_arguments",
    "t/integration/test_tasks.py::test_tasks::test_pydantic_string_annotations",
    "t/integration/test_tasks.py::test_tasks::test_revoke_by_stamped_headers_no_match",
    "t/integration/test_tasks.py::test_tasks::test_wrong_arguments",
}


def test_celery_integration_suite(tmp_path, capsys):
    res = run.run(tmp_path, PER_TEST_TIMEOUT)
    report = (tmp_path / "results.md").read_text()
    with capsys.disabled():
        print(f"\nCelery {run.harness.CELERY_VERSION} integration suite on fastq: {res.summary()}\n"
              f"  table: {tmp_path / 'results.md'}")
    assert res.outcomes, f"no outcomes parsed; see {tmp_path / 'pytest.log'}"
    passed = res.passed_ids()
    regressed = {t: res.outcomes[t].outcome if t in res.outcomes else "not collected" for t in sorted(KEEP_PASSING - passed)}
    assert not regressed, f"tests that passed before do not now: {regressed}\n\n{report[:20000]}"
    assert len(passed) >= PASSED_FLOOR, f"{len(passed)} passed < floor {PASSED_FLOOR}\n\n{report[:20000]}"
