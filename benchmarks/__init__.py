"""amlops benchmarks: one script per figure, each printing ratios against a baseline measured in the same run.

Run all: ``python -m benchmarks [--quick] [--only NAME]``; one: ``python -m benchmarks.scorer --quick``.
Never imported by ``controller``; nothing here is a test (timings are printed, never asserted).
"""
