"""Versioned schema migrations: `NNNN_name.sql`, applied in order by `journeymap migrate`."""
