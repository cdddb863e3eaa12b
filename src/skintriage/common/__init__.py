"""Leaf helpers every stage may use: atomic file writes (``atomic``), timing primitives (``timing``), the
markdown formatting of generated documents (``markdown``), where the project's files are (``paths``) and
optional dependencies (``extras``).

They import nothing else from skintriage, so any layer can depend on them without pulling the pipeline in.
"""
