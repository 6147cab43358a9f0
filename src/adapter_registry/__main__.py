"""`python -m adapter_registry` runs the CLI."""

from adapter_registry.cli import main

main()
