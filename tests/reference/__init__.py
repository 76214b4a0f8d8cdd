"""Slow, literal reference implementations that tests and benchmarks compare the library with.

Importable as ``reference`` because ``tests`` is on pytest's ``pythonpath`` (pyproject.toml);
benchmarks put ``tests`` on ``sys.path`` themselves.
"""
