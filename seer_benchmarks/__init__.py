"""Benchmarks for torchrl_seer (run with ``make bench``; results land in ``docs/benchmarks/``)."""
