"""The edge: ClickHouse, Redis and alert delivery. The only package that talks to stores."""
