"""Step 1, data: registered sources -> manifest -> leakage-free split -> dataset and transforms.

Also the taxonomy every label is mapped into (``taxonomy`` and the per-vocabulary ``label_maps/``) and the
one list of image suffixes (``images``). Imports nothing above it: no model, no torch network code.
"""
