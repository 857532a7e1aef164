"""Settings: `journeymap.toml` plus `JOURNEYMAP_*` environment variables, validated once at start.

Precedence, highest first: explicit arguments, environment variables (nested groups with a double
underscore, e.g. ``JOURNEYMAP_KAFKA__BOOTSTRAP_SERVERS``), the TOML file, defaults. The file is
``./journeymap.toml`` unless ``JOURNEYMAP_CONFIG`` or ``--config`` names another.

A bad value fails here, at start, with a :class:`~processors.errors.ConfigError` that names the
field. Processors receive the plain values of :meth:`Settings.processing`.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from processors.config import (
    DecodeConfig,
    FunnelConfig,
    IdentityConfig,
    JourneyConfig,
    OutcomesConfig,
    ProcessingConfig,
    WindowsConfig,
)
from processors.errors import ConfigError
from sinks.migrations import RETENTION_COLUMNS

DEFAULT_CONFIG_FILE = "journeymap.toml"
ENV_PREFIX = "JOURNEYMAP_"


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TopicNames(_Group):
    raw: str = "touchpoints.raw"
    dlq: str = "touchpoints.dlq"
    resolved: str = "touchpoints.resolved"
    merges: str = "identity.merges"
    late: str = "journey.late"
    scores: str = "scores"
    alerts: str = "alerts"
    alerts_dlq: str = "alerts.dlq"  # alerts the webhook could not deliver, with the reason


class KafkaSettings(_Group):
    bootstrap_servers: str = "127.0.0.1:9092"
    partitions: Annotated[int, Field(ge=1, le=10_000)] = 4
    replication_factor: Annotated[int, Field(ge=1, le=10)] = 1
    retention_ms: Annotated[int, Field(ge=-1)] = 7 * 86_400_000
    dlq_retention_ms: Annotated[int, Field(ge=-1)] = 30 * 86_400_000
    topics: TopicNames = TopicNames()
    consumer_group: str = "journeymap"
    # The workers' fetches (Kafka's fetch.min.bytes and fetch.max.wait.ms): the broker answers a
    # fetch once this many bytes are there or the wait is over. Faust's own (1 byte, 1500 ms)
    # answer at once with whatever is there, so a live stream comes in fetches of a few messages;
    # 64 KiB or 25 ms gathers each fetch for at most 25 ms (docs/streaming.md, "Fetch sizes").
    consumer_fetch_min_bytes: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)] = 65_536
    consumer_fetch_max_wait_ms: Annotated[int, Field(ge=0, le=60_000)] = 25

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value


class RedisSettings(_Group):
    url: str = "redis://127.0.0.1:6379/0"
    # The worker's identity cache (sinks.identity_redis): how many identifiers one worker keeps
    # between batches (~300 B each; past this it starts over); 0 reads every batch's identifiers.
    identity_cache_keys: Annotated[int, Field(ge=0)] = 250_000

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"expected a redis://host:port/db URL, got {value!r}")
        return value


class ClickHouseSettings(_Group):
    # http(s)://host:port for a server; a filesystem path (or chdb:PATH) for embedded chDB.
    url: str = ".journeymap/chdb"
    database: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")] = "journeymap"
    user: str = "default"
    password: SecretStr = SecretStr("")
    flush_rows: Annotated[int, Field(ge=1)] = 50_000
    flush_interval_s: Annotated[float, Field(gt=0)] = 1.0
    # Retention: rows older than this many days (by event time) age out of the raw tables
    # (touchpoints, dead_letters, late_events); 0 keeps them forever.
    ttl_days: Annotated[int, Field(ge=0)] = 0
    # Per-table overrides, e.g. {transition_cells = 400, alerts = 365, touchpoints = 90}; any table
    # in sinks.migrations.RETENTION_COLUMNS. Applied by `journeymap migrate` and the replay.
    ttl_days_by_table: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    @field_validator("ttl_days_by_table")
    @classmethod
    def _known_tables(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(RETENTION_COLUMNS))
        if unknown:
            raise ValueError(
                f"no TTL for {', '.join(unknown)}: tables that can age out are "
                + ", ".join(sorted(RETENTION_COLUMNS))
            )
        return value

    # How long the sink retries (with backoff) while ClickHouse is down before giving up.
    retry_total_s: Annotated[float, Field(gt=0)] = 120.0

    @property
    def is_server(self) -> bool:
        return urlsplit(self.url).scheme in ("http", "https")

    @property
    def embedded_path(self) -> Path:
        return Path(self.url.removeprefix("chdb:").removeprefix("file:"))


class ServicesSettings(_Group):
    """Local development services started by `journeymap services up` (all on 127.0.0.1)."""

    home: Path = Path(".journeymap/services")
    kafka_controller_port: Annotated[int, Field(ge=1, le=65535)] = 9093
    clickhouse_tcp_port: Annotated[int, Field(ge=1, le=65535)] = 9000
    kafka_version: str = "4.1.1"


class WorkerSettings(_Group):
    # Both agents' batches (streams.batching.take_ready) are handed over as soon as events are
    # there, up to batch_max; batch_within_s bounds how long a batch that keeps growing is
    # gathered (and how often an idle stream is looked at), it is no longer a wait per batch.
    batch_max: Annotated[int, Field(ge=1, le=100_000)] = 1_000
    batch_within_s: Annotated[float, Field(gt=0)] = 0.5
    # How many touchpoints.raw messages may wait for the ingest task before the consumer stops
    # fetching their partition until half have been taken (streams.raw_batches; at least
    # batch_max). Faust's own stream buffer size, by default.
    raw_buffer_max: Annotated[int, Field(ge=1, le=1_000_000)] = 4_096
    web_port: Annotated[int, Field(ge=1, le=65535)] = 6066
    # The address the worker's web server (/metrics) listens on. Loopback by default; in a
    # container set 0.0.0.0 and publish the port on the host's loopback (docker-compose.yml does).
    web_bind: IPvAnyAddress = IPv4Address("127.0.0.1")
    # How often a partition's state is checkpointed to Redis (with its offset).
    checkpoint_every_s: Annotated[float, Field(gt=0)] = 10.0
    # How often the snapshot tables (funnel_dropoff, customer_scores; attribution and segments
    # on a worker owning every partition) are written; also at shutdown.
    snapshot_every_s: Annotated[float, Field(gt=0)] = 60.0


class ApiToken(_Group):
    """One bearer token of the serving API. `reader` reads customers (hashed identifiers only),
    `pii` also raw identifiers where stored (journeymap stores none: see docs/serving.md),
    `writer` also records interventions and assignments."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    token: SecretStr
    role: Literal["reader", "pii", "writer"] = "reader"

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("a token needs at least 16 characters (use `openssl rand -hex 24`)")
        return value


class ServingSettings(_Group):
    """The serving API (docs/serving.md): tokens and the Redis keys it reads."""

    # e.g. JOURNEYMAP_SERVING__TOKENS='[{"name": "crm", "token": "...", "role": "reader"}]'
    tokens: list[ApiToken] = []
    # Key prefix of the serving state; "" means jm:serve:<kafka.consumer_group>.
    redis_prefix: str = ""
    # `journeymap replay` also writes the serving state (like --serve-redis).
    replay_to_redis: bool = False


class AlertsWebhookSettings(_Group):
    """`journeymap alerts webhook`: each alert POSTed to `url`, retried with backoff."""

    url: str | None = None  # http(s)://...; --url overrides it
    consumer_group: str = "journeymap-alerts-webhook"
    request_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    backoff_initial_s: Annotated[float, Field(gt=0)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 60.0
    # After this long without a 2xx the alert goes to kafka.topics.alerts_dlq with the reason.
    give_up_after_s: Annotated[float, Field(gt=0)] = 900.0

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and (urlsplit(value).scheme not in ("http", "https")
                                  or not urlsplit(value).netloc):
            raise ValueError(f"expected an http(s)://host[:port]/path URL, got {value!r}")
        return value


class ModelsSettings(_Group):
    """The online models (docs/models.md)."""

    # JSON Lines of {"text", "label"} (negative / neutral / positive) the sentiment model learns
    # from when a replay or a worker builds its models; "" is the corpus journeymap ships.
    sentiment_corpus: str = ""
    # Drift alerts on the propensity models' prequential error (docs/models.md, drift): on/off,
    # and the labels a model version must have been fitted on before its errors are watched.
    watch_propensity_error: bool = True
    propensity_error_min_fit: Annotated[int, Field(ge=0)] = 5_000

    @field_validator("sentiment_corpus")
    @classmethod
    def _readable_corpus(cls, value: str) -> str:
        if value:
            from streams.corpus import read_corpus

            try:
                read_corpus(Path(value))
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    services: ServicesSettings = ServicesSettings()
    worker: WorkerSettings = WorkerSettings()
    alerts_webhook: AlertsWebhookSettings = AlertsWebhookSettings()
    serving: ServingSettings = ServingSettings()
    models: ModelsSettings = ModelsSettings()
    outcomes: OutcomesConfig = OutcomesConfig()
    funnels: list[FunnelConfig] = []
    windows: WindowsConfig = WindowsConfig()
    journey: JourneyConfig = JourneyConfig()
    identity: IdentityConfig = IdentityConfig()
    decode: DecodeConfig = DecodeConfig()
    identity_salt: SecretStr = SecretStr("journeymap-dev-salt")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _CONFIG_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def processing(self) -> ProcessingConfig:
        """The plain values processors take."""
        return ProcessingConfig(
            outcomes=self.outcomes,
            funnels=self.funnels,
            windows=self.windows,
            journey=self.journey,
            identity=self.identity,
            decode=self.decode,
            identity_salt=self.identity_salt.get_secret_value(),
        )


_CONFIG_FILE: dict[str, Path | None] = {}


def _describe(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"])
        env = ENV_PREFIX + "__".join(str(p) for p in err["loc"] if not isinstance(p, int)).upper()
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (.env.example lists every setting: check the spelling)"
        got = err.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        lines.append(f"  {field}: {msg}{shown}   [file key `{field}` or env {env}]")
    return "\n".join(lines)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once. Raises ConfigError naming every bad field."""
    path: Path | None
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
    elif os.environ.get(ENV_PREFIX + "CONFIG"):
        path = Path(os.environ[ENV_PREFIX + "CONFIG"])
        if not path.is_file():
            raise ConfigError(f"{ENV_PREFIX}CONFIG names {str(path)!r}, which does not exist")
    else:
        path = Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).is_file() else None
    origin = f"{path}, environment" if path else "environment"
    _CONFIG_FILE["path"] = path
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
    except ValueError as exc:  # a TOML syntax error surfaces as ValueError (tomllib)
        raise ConfigError(f"could not read {origin}: {exc}") from None
    finally:
        _CONFIG_FILE.clear()
