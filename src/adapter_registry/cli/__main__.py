"""`python -m adapter_registry.cli` runs the CLI (as `python -m adapter_registry` does)."""

from adapter_registry.cli import main

main()
