"""Step 2, the model: the architecture registry (``registry.create_model``: one entry per architecture with
its own facts), the typed ``model.json`` (``metadata.BundleMetadata``), the bundle on disk (``bundle``:
weights, calibration, thresholds and metadata, integrity-checked when loaded) and its model card (``card``:
``MODEL_CARD.md`` written from the bundle's metadata). The bundled model is package data in ``default/``.
"""
