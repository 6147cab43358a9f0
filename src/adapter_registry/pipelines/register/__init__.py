"""The register stage of an adapter recipe."""
