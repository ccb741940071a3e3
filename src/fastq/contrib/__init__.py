"""Integrations with other libraries, each imported on its own and only when used:
``fastq.contrib.django``, ``fastq.contrib.sentry``, ``fastq.contrib.otel``.
See docs/integrations.md.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""
