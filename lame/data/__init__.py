"""Datasets: the directory format (dataset.py), the bundled digits benchmark (digits.py) and batching."""
