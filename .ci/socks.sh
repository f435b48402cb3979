#!/usr/bin/env bash
# Runs the microsocks tests of tests/integration/proxy.rs through a real SOCKS5 proxy:
# microsocks (Debian's package) on 127.0.0.1 with username/password auth (RFC 1929).
# Installs microsocks if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v microsocks >/dev/null 2>&1; then
  echo "installing microsocks"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y microsocks >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y microsocks >/dev/null; }
fi

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
microsocks -i 127.0.0.1 -p "$port" -u nws -P s3cret > "$dir/log" 2>&1 &
proxy_pid=$!
trap 'kill $proxy_pid 2>/dev/null || true; rm -rf "$dir"' EXIT

for _ in $(seq 1 100); do
  if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then break; fi
  sleep 0.1
done
python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.5)" \
  || { echo "microsocks did not start"; cat "$dir/log"; exit 1; }

# The microsocks tests are #[ignore]d (a plain `cargo test` cannot run them): run exactly
# those, and fail if none ran, so a renamed test cannot turn this step into a silent pass.
NWS_SOCKS_URL="socks5://nws:s3cret@127.0.0.1:$port" \
  cargo test --test integration microsocks -- --ignored --test-threads=2 2>&1 | tee "$dir/test.log" \
  || { echo "--- microsocks log"; tail -30 "$dir/log"; exit 1; }
grep -Eq '^test result: ok\. [1-9][0-9]* passed' "$dir/test.log" \
  || { echo "no microsocks test ran"; exit 1; }
