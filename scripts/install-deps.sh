#!/usr/bin/env bash
# Install what the tests and `journeymap services up` need. Idempotent: safe to run every time.
#   - Debian packages, only when missing: redis-server, a Java 17+ runtime, maven, chromium
#   - this project with its dev extra: pip install -e '.[dev]'
#   - the Kafka broker jars from Maven Central, into ~/.cache/journeymap/kafka-<version>/libs
#   - the native cores (native/identity, native/journeys; Rust): scripts/build-native.sh, each
#     skipped when the installed module was built from the same sources; a failed build fails
#     this script (CI tests the native cores). Rust: rustup's in ~/.cargo/bin, else Debian's
#     cargo and rustc.
set -euo pipefail
cd "$(dirname "$0")/.."

# rustup's cargo when a non-login shell did not put it on PATH
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
# Browser tests (tests/browser) drive Debian's Chromium through Playwright: no browser download.
command -v chromium >/dev/null || missing+=(chromium)
# Debian 12's rustc is 1.63: PyO3 0.22's minimum, and what the native crates' Cargo.lock files target.
command -v cargo >/dev/null || missing+=(cargo rustc)
if ((${#missing[@]})); then
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "install-deps: need root or sudo for: ${missing[*]}" >&2; exit 1; }
        sudo="sudo"
    fi
    echo "install-deps: apt-get install ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "install-deps: pip install -e '.[dev]'"
python -m pip install -q --disable-pip-version-check -e '.[dev]'

echo "install-deps: the native cores (identity, journeys)"
scripts/build-native.sh

echo "install-deps: Kafka jars"
python - <<'PY'
from streams.services import ServiceManager
from streams.settings import load_settings

settings = load_settings()
libs = ServiceManager(settings).fetch_kafka()
print(f"install-deps: Kafka {settings.services.kafka_version} jars in {libs}")
PY
