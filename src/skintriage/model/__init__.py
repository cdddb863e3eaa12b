"""Step 2, the model: the architecture registry (``registry.create_model``) and the bundle on disk
(``bundle``: weights, calibration, thresholds and metadata, integrity-checked when loaded).
"""
