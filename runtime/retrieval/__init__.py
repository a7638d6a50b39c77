"""Vector stores and corpus indexing: the exact ``Index`` (index, index_io), FAISS ``AnnIndex``,
the Qdrant store and resumable corpus indexing. Imports errors, artifact and inputs; never engines.
"""
