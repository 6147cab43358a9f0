"""The evaluate stage of an adapter recipe."""
