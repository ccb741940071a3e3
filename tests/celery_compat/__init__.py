"""Celery 5.7.0's own integration tests, run against fastq (issue #22).

Only the adaptation layer lives here: Celery's test files are taken from its
sdist at test time (``harness.prepare``), with their import lines rewritten.
"""
