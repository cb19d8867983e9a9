"""Training libraries: LoRA wrapping and optimizer, the objectives, the recipe keys, resumable state, checkpoints."""
