"""Inference engines behind one facade (``backends``: ONNX Runtime, TensorRT), provider choice
(``providers``) and TensorRT (``tensorrt/``). Imports errors and artifact; never retrieval.
"""
