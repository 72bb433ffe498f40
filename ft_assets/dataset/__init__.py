"""Data preparation: validation, cleaning, de-duplication and splits, and their assets."""
