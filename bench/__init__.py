"""Benchmarks of vip-worker against local SQS endpoints and peer workers.

``python -m bench.run [--quick | --smoke] [--endpoint moto|localstack]`` (or ``make bench``)
runs every scenario and prints a table, then a JSON summary as its last line. What each
figure means and what bounds it: docs/benchmarks.md.
"""
