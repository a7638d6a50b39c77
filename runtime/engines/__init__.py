"""Inference engines behind one facade (``backends``: ONNX Runtime, TensorRT), provider choice
(``providers``), one mapped copy of the weights the full and the text graph share
(``shared_weights``) and TensorRT (``tensorrt/``). Imports errors and artifact; never retrieval.
"""
