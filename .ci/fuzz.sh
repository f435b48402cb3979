#!/usr/bin/env bash
# A bounded fuzzing pass over the three cargo-fuzz targets in fuzz/ (see fuzz/README.md):
#   after_handshake          arbitrary bytes from the server after a valid opening handshake
#   handshake_response       arbitrary responses to the opening handshake
#   after_deflate_handshake  arbitrary bytes after a handshake that negotiated
#                            permessage-deflate (its parameters from the first byte)
# Each runs for FUZZ_SECONDS (default 30), starting from the saved corpus, which stays
# untouched (new inputs go to a temporary directory). A crash or contract violation fails
# the script and prints the reproducer. Where cargo-fuzz cannot run, it says why and
# exits 0: tests/fuzz_replay.rs replays the saved corpus on every `cargo test` anyway.
#
# Environment:
#   FUZZ_SECONDS=30      time per target
#   FUZZ_SANITIZER=none  or address (slower; needs RUSTC_BOOTSTRAP on stable, set here)
#   FUZZ_INSTALL=1       install cargo-fuzz with `cargo install` when it is missing (0: skip)
#   FUZZ_SEED=1          libFuzzer's seed; 0 for a random one. CI keeps it fixed, so that
#                        a pass that found nothing yesterday finds nothing today unless
#                        the code changed (two random passes on 2026-12-07 each found a
#                        new divergence in seconds, and CI is a gate, not a search);
#                        explore with FUZZ_SEED=0 and longer FUZZ_SECONDS.
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-30}
sanitizer=${FUZZ_SANITIZER:-none}
targets=(after_handshake handshake_response after_deflate_handshake)

skip() {
  echo "fuzz: skipped: $*"
  echo "fuzz: (tests/fuzz_replay.rs still replays the saved corpus in cargo test)"
  exit 0
}

if ! cargo fuzz --version >/dev/null 2>&1; then
  if [ "${FUZZ_INSTALL:-1}" = 1 ]; then
    echo "fuzz: installing cargo-fuzz"
    timeout 900 cargo install cargo-fuzz --locked --quiet ||
      skip "cargo-fuzz is not installed and 'cargo install cargo-fuzz' failed"
  else
    skip "cargo-fuzz is not installed (cargo install cargo-fuzz --locked)"
  fi
fi
cargo fuzz --version

# With -s none cargo-fuzz passes only stable flags; -s address passes -Zsanitizer=address,
# which RUSTC_BOOTSTRAP lets the stable toolchain accept.
export RUSTC_BOOTSTRAP=1

echo "fuzz: building the targets (sanitizer: $sanitizer)"
if ! timeout 1200 cargo fuzz build -s "$sanitizer" >/tmp/nwebsocket-fuzz-build.log 2>&1; then
  tail -30 /tmp/nwebsocket-fuzz-build.log
  skip "the fuzz targets do not build with this toolchain (log above)"
fi

work=$(mktemp -d /tmp/nwebsocket-fuzz.XXXXXX)
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$work/$t/new" "$work/$t/artifacts"
  dict=()
  [ -f "fuzz/dicts/$t.dict" ] && dict=(-dict="fuzz/dicts/$t.dict")
  # The deflate target's limits let frames reach the 16 KiB large-frame path.
  max_len=8192
  [ "$t" = after_deflate_handshake ] && max_len=32768
  echo "fuzz: $t for ${seconds}s"
  # -timeout: one input may take at most this long (the harness bounds a connection to 10 s).
  timeout $((seconds + 120)) cargo fuzz run -s "$sanitizer" "$t" "$work/$t/new" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=30 -rss_limit_mb=4096 \
    -seed="${FUZZ_SEED:-1}" \
    -artifact_prefix="$work/$t/artifacts/" -print_final_stats=1 "${dict[@]}" \
    >"$work/$t/log" 2>&1
  status=$?
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)|^Done ' "$work/$t/log" || tail -5 "$work/$t/log"
  if [ "$status" -ne 0 ]; then
    failed=1
    echo "fuzz: $t FAILED (exit $status); the end of its log:"
    tail -60 "$work/$t/log"
    for a in "$work/$t/artifacts"/*; do
      [ -f "$a" ] || continue
      echo "fuzz: reproducer $a ($(wc -c <"$a") bytes), base64:"
      base64 -w 100 "$a"
      echo "fuzz: replay with: RUSTC_BOOTSTRAP=1 cargo fuzz run -s $sanitizer $t $a"
    done
  else
    echo "fuzz: $t ok"
  fi
done
exit "$failed"
