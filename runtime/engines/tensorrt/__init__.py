"""TensorRT: engine metadata and compatibility (meta), the lazily imported runtime backend
(backend) and the engine builder (build). Imports errors, artifact and each other only.
"""
