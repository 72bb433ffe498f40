"""ft-assets: Dagster assets that turn example data into fine-tuned language models."""
