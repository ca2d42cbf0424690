"""The throughput suite: ``python -m perf`` (report) and ``pytest perf/`` (pytest-benchmark)."""
