"""The train stage of an adapter recipe."""
