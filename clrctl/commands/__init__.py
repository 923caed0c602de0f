"""One module per command; each registers itself on :data:`clrctl.cli.app`."""
