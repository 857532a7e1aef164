#!/usr/bin/env bash
# Build and install journeymap's native cores, every crate under native/ (Rust, PyO3, each built
# by maturin into its own Python package: native/identity -> `journeymap_native`, native/journeys
# -> `journeymap_journeys`, native/decode -> `journeymap_decode`, the module name in its
# pyproject.toml), each unless the installed one was built from the same sources: the build
# stamps the sources' hash into the module (<module>.SOURCE_HASH), so a second run costs one
# import per crate.
#   scripts/build-native.sh            build what is needed; exit non-zero if a build fails
#   scripts/build-native.sh --check    exit 0 if every installed module is up to date, 1 if not
# Needs cargo and rustc >= 1.63 (rustup's in ~/.cargo/bin, or Debian's `cargo` and `rustc`:
# scripts/install-deps.sh installs those when cargo is missing). journeymap works without the
# modules (identity.engine, journey.engine and decode.engine = auto fall back to Python, same
# outputs).
set -euo pipefail
cd "$(dirname "$0")/.."

# rustup's cargo when a non-login shell did not put it on PATH
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi

# Cargo before 1.68 (Debian 12's is 1.65) reads crates.io's index by git from GitHub unless told
# to use the sparse protocol, then an unstable feature: enabled for those builds.
sparse() {
    if cargo --version | grep -Eq '^cargo 1\.(6[0-7])\.'; then
        export RUSTC_BOOTSTRAP=1 CARGO_UNSTABLE_SPARSE_REGISTRY=true
    fi
}

stale=0
for crate in native/*/; do
    crate=${crate%/}
    [ -f "$crate/Cargo.toml" ] || continue
    module=$(sed -n 's/^module-name = "\(.*\)"$/\1/p' "$crate/pyproject.toml")
    # The sources, in a fixed order, with their paths (what the module is built from).
    source_hash=$(cd "$crate" && find Cargo.toml Cargo.lock pyproject.toml src -type f \
        | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
    installed=$(python -c "import $module; print(getattr($module, 'SOURCE_HASH', ''))" \
        2>/dev/null || true)
    if [ "$installed" = "$source_hash" ]; then
        [ "${1:-}" = --check ] || echo "build-native: $module up to date ($source_hash)"
        continue
    fi
    if [ "${1:-}" = --check ]; then
        echo "build-native: $module ${installed:+$installed }is not built from these sources ($source_hash)" >&2
        stale=1
        continue
    fi
    command -v cargo >/dev/null || {
        echo "build-native: cargo not found: install Rust (Debian: apt-get install cargo rustc)" >&2
        exit 1
    }
    sparse
    echo "build-native: pip install ./$crate ($(rustc --version), sources $source_hash)"
    # maturin from PyPI in pip's isolated build environment; crates from crates.io (Cargo.lock)
    JOURNEYMAP_NATIVE_SOURCE_HASH=$source_hash \
        python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "./$crate"
    python -c "import $module as m; assert m.SOURCE_HASH == '$source_hash', m.SOURCE_HASH"
    echo "build-native: $module installed ($source_hash)"
done
exit $stale
