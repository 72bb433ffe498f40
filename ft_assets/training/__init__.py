"""Training: the base model, LoRA adapters and merged models."""
