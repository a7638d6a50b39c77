"""The graphs exported beside the full one, and how they share its weights.

``text``: the text-only graph (no vision tower) that text-only rows are routed to, built and
parity-gated per precision; ``shared_weights``: its initializers turned into references into
the full graph's ``.data`` (one copy on disk); ``routed``: both graphs as the branches of one
``If`` on ``image_mask`` (one session, weights loaded and pre-packed once).
"""
