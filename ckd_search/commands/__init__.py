"""Implementations of the ``ckd-search`` subcommands (imported lazily by the CLI)."""
