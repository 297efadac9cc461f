"""Subcommands of the ``milan-hf`` command line."""
