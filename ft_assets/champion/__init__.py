"""The model that serves: the promotion rule, its records, the champion_model asset and its CLI."""
