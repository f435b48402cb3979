#!/usr/bin/env bash
# Compiles every ```rust block of README.md against this checkout of the crate, each as an
# example of a scratch package outside the workspace. Blocks that are not Rust must be
# marked (```sh, ```text) and are not checked.
#
#   docs/check-readme.sh            # from the repository root; exits non-zero on failure
#
# The blocks are complete programs (each has its own `fn main`), marked `rust,no_run`: they
# connect to servers that do not exist here, so they are built, not run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=${README_CHECK_DIR:-$root/target/readme-check}
rm -rf "$scratch/examples"
mkdir -p "$scratch/examples" "$scratch/src"

cat > "$scratch/Cargo.toml" <<EOF
[package]
name = "readme-check"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
nwebsocket = { path = "$root" }

[workspace]
EOF
echo "" > "$scratch/src/lib.rs"
cp "$root/Cargo.lock" "$scratch/Cargo.lock"

# Split the README's ```rust blocks into examples/block_N.rs; refuse an unmarked block.
awk -v dir="$scratch/examples" '
  /^```/ && !open {
    open = 1
    if ($0 == "```") { printf "README.md:%d: a code block with no language; mark it sh or text\n", NR > "/dev/stderr"; bad = 1 }
    if ($0 ~ /^```rust/) { n++; file = sprintf("%s/block_%d.rs", dir, n); rust = 1 }
    next
  }
  /^```/ && open { open = 0; if (rust) { close(file); rust = 0 }; next }
  rust { print > file }
  END { printf "%d rust block(s)\n", n > "/dev/stderr"; exit bad }
' "$root/README.md"

cd "$scratch"
CARGO_TARGET_DIR="$scratch/target" cargo build --quiet --examples
echo "README blocks: ok"
