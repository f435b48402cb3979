#!/usr/bin/env bash
# The declared minimum Rust version (Cargo.toml's rust-version) builds the crate, its
# tests and examples, and passes the unit tests (the integration suite runs on the current
# toolchain in `cargo test`; running it twice cost CI minutes). Runs in a copy with a
# lockfile resolved for that version (cargo's MSRV-aware resolver), so the main
# Cargo.lock keeps the newest dependency versions. Installs the toolchain with rustup.
set -euo pipefail
cd "$(dirname "$0")/.."

msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$msrv" ] || { echo "msrv.sh: no rust-version in Cargo.toml"; exit 1; }
rustup toolchain install "$msrv" --profile minimal --no-self-update

work=$(mktemp -d /tmp/nwebsocket-msrv.XXXXXX)
trap 'rm -rf "$work"' EXIT
git ls-files -z | xargs -0 -I{} cp --parents {} "$work"
cd "$work"
CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback cargo +"$msrv" generate-lockfile
export CARGO_TARGET_DIR=${MSRV_TARGET_DIR:-/tmp/nwebsocket-msrv-target}
cargo +"$msrv" check --all-targets
cargo +"$msrv" test --lib
echo "msrv: Rust $msrv ok"
