#!/usr/bin/env bash
# Runs the tinyproxy tests of tests/integration/proxy.rs through a real HTTP CONNECT proxy: tinyproxy (Debian's
# package) on 127.0.0.1 with Basic auth. Installs tinyproxy if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v tinyproxy >/dev/null 2>&1; then
  echo "installing tinyproxy"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y tinyproxy >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y tinyproxy >/dev/null; }
fi

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/tinyproxy.conf" <<CONF
User nobody
Group nogroup
Port $port
Listen 127.0.0.1
Timeout 60
MaxClients 50
Allow 127.0.0.1
BasicAuth nws s3cret
LogLevel Info
CONF
tinyproxy -d -c "$dir/tinyproxy.conf" > "$dir/log" 2>&1 &
proxy_pid=$!
trap 'kill $proxy_pid 2>/dev/null || true; rm -rf "$dir"' EXIT

for _ in $(seq 1 100); do
  if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then break; fi
  sleep 0.1
done
python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.5)" \
  || { echo "tinyproxy did not start"; cat "$dir/log"; exit 1; }

tinyproxy -v
# The tinyproxy tests are #[ignore]d (a plain `cargo test` cannot run them): run exactly
# those, and fail if none ran, so a renamed test cannot turn this step into a silent pass.
NWS_PROXY_URL="http://nws:s3cret@127.0.0.1:$port" \
  cargo test --test integration tinyproxy -- --ignored --test-threads=2 2>&1 | tee "$dir/test.log" \
  || { echo "--- tinyproxy log"; tail -30 "$dir/log"; exit 1; }
grep -Eq '^test result: ok\. [1-9][0-9]* passed' "$dir/test.log" \
  || { echo "no tinyproxy test ran"; exit 1; }
