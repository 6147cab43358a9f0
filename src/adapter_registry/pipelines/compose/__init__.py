"""The compose stage of a composed recipe: registered LoRA adapters → one new adapter."""
