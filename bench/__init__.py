"""Benchmarks of Omni against Temporal and DBOS, side by side on one machine (``make bench``)."""
