"""One module per CLI command; `streams.cli` loads them lazily so `--help` stays fast."""
