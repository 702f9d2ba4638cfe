"""Subcommands of `flowdeck`, one module per group."""
