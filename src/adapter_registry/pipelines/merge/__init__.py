"""The merge stage of an adapter recipe."""
