"""Synthetic examples generated from raw examples and source documents."""
