"""Latent decoders that are whole language models: a pretrained causal LM reading the K reason
states as a prefix (:mod:`lame.decoders.lm`), and the local directories it loads from
(:mod:`lame.decoders.directories`: ``python -m lame.decoders.directories smollm2|tiny DIR``).
The small decoder head trained from scratch is :class:`lame.heads.DecoderHead`."""
