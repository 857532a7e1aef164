"""Local development services: real Kafka (KRaft), Redis and a ClickHouse server, no Docker.

`journeymap services up|down|status` drives :class:`ServiceManager`. Everything binds to
127.0.0.1, on the ports the settings name, and keeps its pid file, log and data under
``settings.services.home``:

    kafka       java -cp <jars from Maven Central> kafka.Kafka server.properties (KRaft, 1 node)
    redis       Debian's redis-server, our own process (no systemd)
    clickhouse  python -m streams.chdb_server: embedded chDB serving HTTP and native TCP

A service that already answers on its port but was not started by us is reported as
``external`` and left alone, so `up` is idempotent and never fights another server.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from processors.errors import ConfigError, ServiceUnavailable
from streams.settings import Settings

SERVICES: tuple[str, ...] = ("kafka", "redis", "clickhouse")
HOST = "127.0.0.1"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_CLICKHOUSE_HTTP_PORT = 8123
REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = REPO_ROOT / "services"

State = Literal["running", "stopped", "external", "unhealthy", "stale"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceStatus:
    """One row of `journeymap services status`."""

    name: str
    state: State
    pid: int | None
    address: str
    log_file: Path


@dataclass(frozen=True)
class Endpoints:
    """Where each service listens, derived from the settings (see :func:`endpoints`)."""

    kafka_host: str
    kafka_port: int
    kafka_controller_port: int
    redis_host: str
    redis_port: int
    clickhouse_host: str
    clickhouse_http_port: int
    clickhouse_tcp_port: int

    def managed(self, name: str) -> bool:
        """True when the service is on this machine, so `up` may start it."""
        host = {"kafka": self.kafka_host, "redis": self.redis_host}.get(name, self.clickhouse_host)
        return host in LOOPBACK


def endpoints(settings: Settings) -> Endpoints:
    """Ports from the settings: Kafka's first bootstrap server, the Redis URL, and the ClickHouse
    URL when it is an http(s) URL (else the default 8123, since the embedded path has no port)."""
    kafka_host, _, kafka_port = (
        settings.kafka.bootstrap_servers.split(",")[0].strip().rpartition(":")
    )
    redis = urlsplit(settings.redis.url)
    if redis.scheme == "unix":
        raise ConfigError(
            "redis.url is a unix socket; `journeymap services` manages redis://127.0.0.1:PORT only"
        )
    ch_host, ch_port = HOST, DEFAULT_CLICKHOUSE_HTTP_PORT
    if settings.clickhouse.is_server:
        ch = urlsplit(settings.clickhouse.url)
        ch_host = ch.hostname or HOST
        ch_port = ch.port or (8443 if ch.scheme == "https" else DEFAULT_CLICKHOUSE_HTTP_PORT)
    return Endpoints(
        kafka_host=kafka_host.strip("[]"),
        kafka_port=int(kafka_port),
        kafka_controller_port=settings.services.kafka_controller_port,
        redis_host=redis.hostname or HOST,
        redis_port=redis.port or 6379,
        clickhouse_host=ch_host,
        clickhouse_http_port=ch_port,
        clickhouse_tcp_port=settings.services.clickhouse_tcp_port,
    )


def clickhouse_server_url(settings: Settings) -> str:
    """The ClickHouse server URL for integration tests: the setting when it names a server,
    otherwise the local one `services up` starts."""
    if settings.clickhouse.is_server:
        return settings.clickhouse.url
    return f"http://{HOST}:{endpoints(settings).clickhouse_http_port}"


def parse_only(value: str | None) -> tuple[str, ...]:
    """``"kafka,redis"`` -> ("kafka", "redis") in canonical order; None or "" -> all."""
    if not value:
        return SERVICES
    names = {part.strip().lower() for part in value.split(",") if part.strip()}
    unknown = sorted(names - set(SERVICES))
    if unknown:
        raise ConfigError(f"unknown service(s) {', '.join(unknown)}; choose from {SERVICES}")
    return tuple(name for name in SERVICES if name in names)


# ---------------------------------------------------------------------------------------------
# Probes: does something answer the service's protocol on the port?


def _port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def probe_kafka(host: str, port: int, timeout_s: float = 3.0) -> bool:
    """A metadata request answered by a broker (not just an open port)."""
    if not _port_open(host, port):
        return False
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("journeymap.services.rdkafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    admin = AdminClient({"bootstrap.servers": f"{host}:{port}"}, logger=quiet)
    try:
        return bool(admin.list_topics(timeout=timeout_s).brokers)
    except Exception:  # KafkaException for timeouts and transport errors
        return False


def probe_redis(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """PING answered with +PONG (or an auth error, which still proves a Redis is there)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


def probe_clickhouse(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """ClickHouse's HTTP /ping answers ``Ok.``."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/ping", timeout=timeout_s) as resp:
            return bool(resp.read(16).startswith(b"Ok."))
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Processes


def _proc_state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (None when gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap our own child if it already exited
    if sys.platform.startswith("linux"):
        return _proc_state(pid) not in (None, "Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _signal(pid: int, sig: int) -> None:
    """Signal the process group we created for the service (or the process alone)."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _tail(path: Path, n_lines: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log yet)"
    return "\n".join("    " + line for line in lines[-n_lines:])


def _kafka_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, url-safe base64 without padding (Kafka's Uuid).

    Like Kafka's ``Uuid.randomUuid``, never one starting with "-": `kafka-storage format -t`
    would read it as an option and fail (one start in 64 did)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def default_cache_dir() -> Path:
    """Downloaded Kafka jars live here, shared by every checkout, so later starts are offline."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "journeymap"


@dataclass(frozen=True)
class _Launch:
    cmd: list[str]
    cwd: Path
    env: dict[str, str]


class ServiceManager:
    """Start, stop and report the local services. Safe to call from several shells at once."""

    MARKERS: ClassVar[dict[str, str]] = {
        "kafka": "kafka.Kafka",
        "redis": "redis-server",
        "clickhouse": "streams.chdb_server",
    }

    def __init__(
        self,
        settings: Settings,
        *,
        home: Path | None = None,
        cache_dir: Path | None = None,
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.home = (home or settings.services.home).resolve()
        self.cache_dir = cache_dir or default_cache_dir()
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.ends = endpoints(settings)

    # -- paths ---------------------------------------------------------------------------------
    def service_dir(self, name: str) -> Path:
        return self.home / name

    def log_file(self, name: str) -> Path:
        return self.service_dir(name) / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.service_dir(name) / f"{name}.pid"

    def kafka_libs(self) -> Path:
        return self.cache_dir / f"kafka-{self.settings.services.kafka_version}" / "libs"

    def address(self, name: str) -> str:
        e = self.ends
        if name == "kafka":
            return f"{e.kafka_host}:{e.kafka_port} (controller :{e.kafka_controller_port})"
        if name == "redis":
            return f"{e.redis_host}:{e.redis_port}"
        return f"{e.clickhouse_host}:{e.clickhouse_http_port} (tcp :{e.clickhouse_tcp_port})"

    # -- public API ----------------------------------------------------------------------------
    def status(self, only: Sequence[str] = SERVICES) -> list[ServiceStatus]:
        """The state of each service, without changing anything."""
        return [self._status(name) for name in only]

    def up(self, only: Sequence[str] = SERVICES) -> list[ServiceStatus]:
        """Start what is not running and wait until every service answers.

        Raises ServiceUnavailable (naming the log file) when one does not answer in time.
        """
        with self._lock():
            started: list[str] = []
            for name in only:
                current = self._status(name)
                if current.state in ("running", "external"):
                    continue
                if current.state == "unhealthy":  # ours, alive, not answering: maybe starting
                    started.append(name)
                    continue
                self._start(name)
                started.append(name)
            for name in started:
                self._wait_healthy(name)
            return self.status(only)

    def down(self, only: Sequence[str] = SERVICES) -> list[ServiceStatus]:
        """Stop the services we started: SIGTERM, then SIGKILL after ``stop_timeout_s``."""
        with self._lock():
            for name in only:
                pid = self._read_pid(name)
                if pid is not None and self._is_ours(name, pid):
                    self._stop_pid(name, pid)
                self.pid_file(name).unlink(missing_ok=True)
            return self.status(only)

    # -- state ---------------------------------------------------------------------------------
    def _probe(self, name: str) -> bool:
        e = self.ends
        if name == "kafka":
            return probe_kafka(e.kafka_host, e.kafka_port)
        if name == "redis":
            return probe_redis(e.redis_host, e.redis_port)
        return probe_clickhouse(e.clickhouse_host, e.clickhouse_http_port)

    def _read_pid(self, name: str) -> int | None:
        try:
            return int(self.pid_file(name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _is_ours(self, name: str, pid: int) -> bool:
        if not _alive(pid):
            return False
        cmdline = _cmdline(pid)
        return not cmdline or self.MARKERS[name] in cmdline  # no /proc: trust the pid file

    def _status(self, name: str) -> ServiceStatus:
        pid = self._read_pid(name)
        ours = pid is not None and self._is_ours(name, pid)
        answers = self._probe(name)
        state: State
        if ours:
            state = "running" if answers else "unhealthy"
        elif answers:
            state = "external"
        else:
            state = "stale" if pid is not None else "stopped"
        return ServiceStatus(
            name, state, pid if ours else None, self.address(name), self.log_file(name)
        )

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- start ---------------------------------------------------------------------------------
    def _start(self, name: str) -> None:
        if not self.ends.managed(name):
            raise ServiceUnavailable(
                f"{name} at {self.address(name)} does not answer, and it is not on this machine, "
                "so `journeymap services up` cannot start it; start it there or change the URL"
            )
        self.service_dir(name).mkdir(parents=True, exist_ok=True)
        launch = {"kafka": self._prepare_kafka, "redis": self._prepare_redis}.get(
            name, self._prepare_clickhouse
        )()
        log_path = self.log_file(name)
        if log_path.exists() and log_path.stat().st_size > 20 * 2**20:
            log_path.replace(log_path.with_suffix(".log.1"))
        with log_path.open("ab") as out:
            shown = " ".join(
                "***" if prev == "--requirepass" else arg
                for prev, arg in zip(["", *launch.cmd], launch.cmd, strict=False)
            )
            out.write(f"\n=== journeymap services up: {shown}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                launch.cmd,
                cwd=launch.cwd,
                env=launch.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives this shell; `down` signals its group
            )
        self.pid_file(name).write_text(f"{proc.pid}\n")
        log.info("started %s (pid %d), log %s", name, proc.pid, log_path)

    def _wait_healthy(self, name: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        pid = self._read_pid(name)
        while time.monotonic() < deadline:
            if self._probe(name):
                return
            if pid is not None and not _alive(pid):
                raise ServiceUnavailable(
                    f"{name} exited during start-up; see {self.log_file(name)}:\n"
                    + _tail(self.log_file(name))
                )
            time.sleep(0.5)
        if pid is not None:
            self._stop_pid(name, pid)
            self.pid_file(name).unlink(missing_ok=True)
        raise ServiceUnavailable(
            f"{name} did not answer on {self.address(name)} within {self.start_timeout_s:.0f}s "
            f"and was stopped; see {self.log_file(name)}:\n" + _tail(self.log_file(name))
        )

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        return env

    def _prepare_redis(self) -> _Launch:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceUnavailable(
                "redis-server is not installed: run scripts/install-deps.sh "
                "(or `apt-get install -y redis-server`)"
            )
        workdir = self.service_dir("redis")
        cmd = [
            binary,
            "--bind", HOST,
            "--port", str(self.ends.redis_port),
            "--dir", str(workdir),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "yes",  # dev state survives a restart; tests flush their own db
            "--appendfsync", "everysec",
            "--logfile", "",
        ]  # fmt: skip
        password = urlsplit(self.settings.redis.url).password
        if password:  # the URL carries one, so clients will AUTH with it
            cmd += ["--requirepass", password]
        return _Launch(cmd, workdir, self._env())

    def _prepare_clickhouse(self) -> _Launch:
        run_dir = self.service_dir("clickhouse") / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        e = self.ends
        config = Template((TEMPLATES / "clickhouse" / "config.xml.template").read_text())
        (run_dir / "config.xml").write_text(
            config.substitute(
                host=HOST, http_port=e.clickhouse_http_port, tcp_port=e.clickhouse_tcp_port
            )
        )
        data = self.service_dir("clickhouse") / "data"
        cmd = [
            sys.executable, "-m", "streams.chdb_server",
            "--http-port", str(e.clickhouse_http_port),
            "--tcp-port", str(e.clickhouse_tcp_port),
            "--data", str(data),
        ]  # fmt: skip
        return _Launch(cmd, run_dir, self._env())

    def _prepare_kafka(self) -> _Launch:
        java = shutil.which("java")
        if java is None:
            raise ServiceUnavailable(
                "java is not installed (Kafka needs Java 17+): `apt-get install -y "
                "openjdk-17-jre-headless maven`, or run scripts/install-deps.sh"
            )
        libs = self.fetch_kafka()
        kdir = self.service_dir("kafka")
        data = kdir / "data"
        e = self.ends
        template = Template((TEMPLATES / "kafka" / "server.properties.template").read_text())
        props = kdir / "server.properties"
        props.write_text(
            template.substitute(
                host=HOST,
                port=e.kafka_port,
                controller_port=e.kafka_controller_port,
                data_dir=str(data),
                partitions=self.settings.kafka.partitions,
            )
        )
        common = [
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={TEMPLATES / 'kafka' / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={kdir}",
            "-cp", f"{libs}{os.sep}*",
        ]  # fmt: skip
        self._format_kafka_storage([java, "-Xmx256m", *common], props, data)
        heap = ["-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
        return _Launch([java, *heap, *common, "kafka.Kafka", str(props)], kdir, self._env())

    def _format_kafka_storage(self, java_cmd: list[str], props: Path, data: Path) -> None:
        """Format the KRaft log dir once; again only if the controller address changed, since a
        standalone quorum records its voter's endpoint at format time."""
        stamp = self.service_dir("kafka") / "format.stamp"
        wanted = f"{HOST}:{self.ends.kafka_controller_port} {self.settings.services.kafka_version}"
        if (data / "meta.properties").exists() and stamp.exists():
            if stamp.read_text().strip() == wanted:
                return
            log.warning("kafka: controller address or version changed; wiping %s", data)
        shutil.rmtree(data, ignore_errors=True)
        cmd = [
            *java_cmd, "kafka.tools.StorageTool", "format", "--standalone", "--ignore-formatted",
            "-t", _kafka_cluster_id(), "-c", str(props),
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        with self.log_file("kafka").open("a") as out:
            out.write(f"\n=== {' '.join(cmd)}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise ServiceUnavailable(
                f"formatting Kafka storage failed (exit {result.returncode}); "
                f"see {self.log_file('kafka')}:\n" + _tail(self.log_file("kafka"))
            )
        stamp.write_text(wanted + "\n")

    def fetch_kafka(self) -> Path:
        """Download the broker jars from Maven Central once per version (offline afterwards)."""
        libs = self.kafka_libs()
        if (libs / ".complete").exists():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceUnavailable(
                f"Kafka jars are not in {libs} and maven is not installed: "
                "`apt-get install -y maven`, or run scripts/install-deps.sh"
            )
        partial = libs.with_name("libs.partial")
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            mvn, "-q", "-B", "-f", str(TEMPLATES / "kafka" / "pom.xml"),
            "dependency:copy-dependencies",
            f"-Dkafka.version={self.settings.services.kafka_version}",
            f"-DoutputDirectory={partial}",
        ]  # fmt: skip
        log.info("fetching Kafka %s jars into %s", self.settings.services.kafka_version, libs)
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except subprocess.TimeoutExpired:
            raise ServiceUnavailable("fetching Kafka jars with maven timed out (900s)") from None
        if result.returncode != 0 or not any(partial.glob("kafka_*.jar")):
            raise ServiceUnavailable(
                f"fetching Kafka {self.settings.services.kafka_version} with maven failed "
                f"(exit {result.returncode}); is services.kafka_version a released version?\n"
                + (result.stdout + result.stderr)[-2000:]
            )
        shutil.rmtree(libs, ignore_errors=True)
        partial.replace(libs)
        (libs / ".complete").write_text(self.settings.services.kafka_version + "\n")
        return libs

    # -- stop ----------------------------------------------------------------------------------
    def _stop_pid(self, name: str, pid: int) -> None:
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                log.info("stopped %s (pid %d)", name, pid)
                return
            time.sleep(0.2)
        log.warning(
            "%s (pid %d) ignored SIGTERM for %.0fs; killing", name, pid, self.stop_timeout_s
        )
        _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
