"""The validate stage of an adapter recipe."""
