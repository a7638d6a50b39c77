"""Embedding whole corpora beyond one process: ``lame-search embed-corpus --engine ray``.

``sources`` lists a source (a folder of images, JSON lines, Parquet) as numbered shards;
``udf`` holds the Ray Data callables (``CorpusEmbedder`` wraps one ``Embedder`` per actor);
``shards`` writes and reads the output (Parquet shards, errors, summary, index building);
``ray_job`` is the driver. Ray and pyarrow are imported lazily (``pip install
'lame-embed[ray]'``): the base install never needs them.
"""
