"""Evaluation: retrieval metrics over eval rows, multi-seed statistics, plots and lame-bench.

May import lame's model, methods, data and config, and the runtime; never training or the CLIs.
"""
