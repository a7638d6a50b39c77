"""Serving outside this process: the Triton model repository writer and its Python model.
Imports any part of the runtime except cli.
"""
