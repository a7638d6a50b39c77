"""The graphs' dynamic-axis bounds, shared by the exporter, the manifest, the TensorRT
profiles and the runtime's routing (a module of constants, so none of them imports another)."""

# Where the graph's dynamic sequence axis starts (BOS + one token): the exporter's bound, the
# TensorRT profiles' minimum and the shortest row the runtime's routing sends.
MIN_SEQUENCE = 2
# The export's default dynamic-axis bounds, also assumed for artifacts exported before the
# manifest recorded max_batch / max_sequence.
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_SEQUENCE = 512
