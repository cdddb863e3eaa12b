"""Leaf helpers every stage may use: atomic file writes (``atomic``), timing primitives (``timing``) and the
markdown formatting of generated documents (``markdown``).

They import nothing else from skintriage, so any layer can depend on them without pulling the pipeline in.
"""
