"""Data: sources -> manifest -> splits (and, later, datasets and transforms)."""
