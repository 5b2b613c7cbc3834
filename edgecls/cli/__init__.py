"""Command-line entry points: one module per command, argparse only, logic lives in the package."""
