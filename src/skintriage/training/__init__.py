"""Step 6, producing a bundle: the run configuration (``config``), the data it trains on (``data``), the
training loop (``loop``), gate fitting (``gates``) and the multi-process launcher (``distributed``).
"""
