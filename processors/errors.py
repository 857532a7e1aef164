"""The one exception hierarchy of journeymap.

Bad *input* (an event, a row) is never an exception: it is a value (see
:mod:`processors.validation`) that ends in a dead-letter topic. Exceptions are for the operator:
a bad configuration, a store that is down, a database that needs migrating.

    JourneymapError
    ├── ConfigError            a setting is wrong; the message names the field
    ├── ServiceError           a dependency (Kafka, Redis, ClickHouse) failed or is unreachable
    │   ├── ServiceUnavailable     not reachable (after retries, where retrying makes sense)
    │   └── StoreLockedError       an embedded data directory is owned by another process
    ├── SchemaError            the ClickHouse schema is missing or older than this code
    ├── CheckpointError        a model checkpoint is unreadable or from an unknown version
    └── QueryError             a user query or its parameters were rejected
"""

from __future__ import annotations


class JourneymapError(Exception):
    """Root of every error journeymap raises on purpose."""


class ConfigError(JourneymapError):
    """A configuration value is wrong. The message names the field and says what would be valid."""


class ServiceError(JourneymapError):
    """A dependency failed."""


class ServiceUnavailable(ServiceError):
    """A dependency could not be reached."""


class StoreLockedError(ServiceError):
    """An embedded store's data directory is owned by another process."""


class SchemaError(JourneymapError):
    """The ClickHouse schema is missing or out of date; run `journeymap migrate`."""


class CheckpointError(JourneymapError):
    """A model checkpoint is corrupt, of another kind, or from a version this code cannot read."""


class QueryError(JourneymapError):
    """A query or its parameters were rejected before reaching the database."""
