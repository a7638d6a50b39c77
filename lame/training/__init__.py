"""Training: the run's settings (config.py), the two-stage loop (train.py), the per-batch
objective, GradCache, DDP and LoRA.

May import lame's model, methods, data, checkpoint and evaluation, and the runtime; never the CLIs.
"""
