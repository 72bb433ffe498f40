"""The lineage database: what each version was made from, and queries over it."""
