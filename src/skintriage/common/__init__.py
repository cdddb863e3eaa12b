"""Leaf helpers every stage may use: atomic file writes (``atomic``) and timing primitives (``timing``).

They import nothing else from skintriage, so any layer can depend on them without pulling the pipeline in.
"""
