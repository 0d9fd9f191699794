"""Pieces of ``bench_refresh.py``: generated tables, the baselines' SQL,
the concurrent writer, measurement, query-exporter and the report."""
