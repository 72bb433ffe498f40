"""Evaluation: every model on the test split, one row per (model version, test split version)."""
