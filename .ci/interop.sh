#!/usr/bin/env bash
# Interop tests: nwebsocket against Python `websockets` and Node `ws` servers on loopback.
#
#   .ci/interop.sh                  # install (cached), start both servers, run tests/interop.rs
#   .ci/interop.sh python::         # extra arguments go to the test binary (a name filter…)
#   .ci/interop.sh --skip over_limit  # …or --skip NAME
#
# Each server runs twice: declining permessage-deflate, and (--deflate) negotiating it
# (NWS_INTEROP_PY_DEFLATE_URL / NWS_INTEROP_NODE_DEFLATE_URL).
# Installs pinned versions into a cache directory (NWS_INTEROP_CACHE, default
# ~/.cache/nwebsocket-interop): `websockets` with pip into a venv, `ws` with npm. Builds the
# test target first, then starts both servers (each prints its port on its first stdout
# line), exports NWS_INTEROP_PY_URL / NWS_INTEROP_NODE_URL, runs the tests (all
# `#[ignore]`d, so a plain `cargo test` never runs them) with
# `cargo test --test interop -- --ignored --test-threads=2`, and stops the servers on exit.
# Fails if an install fails, a server does not start, or no test ran. Only 127.0.0.1 is used.
set -euo pipefail

WEBSOCKETS_VERSION=17.4 # PyPI `websockets` (needs Python >= 3.11)
WS_VERSION=8.23.0       # npm `ws` (needs Node >= 10)
SERVER_START_TIMEOUT=30 # seconds for a server to print its port
SERVER_LIFETIME=1800    # seconds: the servers exit by themselves after this

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cache="${NWS_INTEROP_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/nwebsocket-interop}"
mkdir -p "$cache"

say() { printf 'interop: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

command -v python3 >/dev/null || die "python3 not found"
command -v node >/dev/null || die "node not found"
command -v npm >/dev/null || die "npm not found"
command -v cargo >/dev/null || die "cargo not found"
say "$(python3 --version 2>&1), node $(node --version), npm $(npm --version 2>/dev/null)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "websockets $WEBSOCKETS_VERSION needs Python >= 3.11"

# --- Python websockets, in a venv (or, without the venv module, a --target directory) ---
pydir="$cache/py-websockets-$WEBSOCKETS_VERSION"
python=""
pythonpath=""
have_websockets() { # $1: python, $2: extra PYTHONPATH
    PYTHONPATH="$2" "$1" -c "import websockets, sys; sys.exit(websockets.__version__ != '$WEBSOCKETS_VERSION')" 2>/dev/null
}
if [ -x "$pydir/venv/bin/python" ] && have_websockets "$pydir/venv/bin/python" ""; then
    python="$pydir/venv/bin/python"
elif [ -d "$pydir/site" ] && have_websockets python3 "$pydir/site"; then
    python=python3 pythonpath="$pydir/site"
else
    say "installing websockets==$WEBSOCKETS_VERSION into $pydir"
    rm -rf "$pydir"
    mkdir -p "$pydir"
    if python3 -m venv "$pydir/venv" >/dev/null 2>&1; then
        timeout 600 "$pydir/venv/bin/python" -m pip install --disable-pip-version-check -q \
            "websockets==$WEBSOCKETS_VERSION" || die "pip install websockets==$WEBSOCKETS_VERSION failed"
        python="$pydir/venv/bin/python"
    else
        say "python3 -m venv is unavailable; installing with pip --target"
        rm -rf "$pydir/venv"
        timeout 600 python3 -m pip install --disable-pip-version-check -q --target "$pydir/site" \
            "websockets==$WEBSOCKETS_VERSION" || die "pip install websockets==$WEBSOCKETS_VERSION failed"
        python=python3 pythonpath="$pydir/site"
    fi
    have_websockets "$python" "$pythonpath" || die "websockets $WEBSOCKETS_VERSION is not importable after install"
fi

# --- Node ws ---
nodedir="$cache/node-ws-$WS_VERSION"
have_ws() {
    node -e "process.exit(require('$nodedir/node_modules/ws/package.json').version === '$WS_VERSION' ? 0 : 1)" 2>/dev/null
}
if ! have_ws; then
    say "installing ws@$WS_VERSION into $nodedir"
    rm -rf "$nodedir"
    mkdir -p "$nodedir"
    timeout 600 npm install --prefix "$nodedir" --no-save --no-package-lock --no-audit --no-fund \
        --loglevel=error "ws@$WS_VERSION" >&2 || die "npm install ws@$WS_VERSION failed"
    have_ws || die "ws $WS_VERSION is not loadable after install"
fi

# --- Build first, so the servers' time is spent on tests ---
cd "$root"
say "building the interop test target"
cargo test --test interop --no-run

# --- Start the servers ---
tmp="$(mktemp -d "${TMPDIR:-/tmp}/nws-interop.XXXXXX")"
pids=()
cleanup() {
    local pid i
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME COMMAND...: runs the server in the background, waits for its port.
port=""
start() {
    local name="$1"
    shift
    "$@" </dev/null >"$tmp/$name.out" 2>"$tmp/$name.err" &
    local pid=$!
    pids+=("$pid")
    local deadline=$((SECONDS + SERVER_START_TIMEOUT))
    port=""
    while [ "$SECONDS" -lt "$deadline" ]; do
        port=""
        # No pipeline or command substitution here: builtins only, so nothing can fail.
        if [ -s "$tmp/$name.out" ]; then IFS= read -r port <"$tmp/$name.out" || true; fi
        port="${port//[[:space:]]/}"
        if [[ "$port" =~ ^[0-9]+$ ]]; then
            say "$name server: $(tail -n 1 "$tmp/$name.err" 2>/dev/null)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$tmp/$name.err" >&2 || true
            die "the $name server exited before printing its port"
        fi
        sleep 0.1
    done
    cat "$tmp/$name.err" >&2 || true
    die "the $name server printed no port within ${SERVER_START_TIMEOUT}s"
}

pyenv=(PYTHONUNBUFFERED=1)
if [ -n "$pythonpath" ]; then pyenv+=("PYTHONPATH=$pythonpath"); fi
start python env "${pyenv[@]}" "$python" "$here/interop/py_server.py" --lifetime "$SERVER_LIFETIME"
py_port="$port"
start node env NODE_PATH="$nodedir/node_modules" \
    node "$here/interop/node_server.js" --lifetime "$SERVER_LIFETIME"
node_port="$port"
# The same two, negotiating permessage-deflate.
start python-deflate env "${pyenv[@]}" "$python" "$here/interop/py_server.py" --deflate \
    --lifetime "$SERVER_LIFETIME"
py_deflate_port="$port"
start node-deflate env NODE_PATH="$nodedir/node_modules" \
    node "$here/interop/node_server.js" --deflate --lifetime "$SERVER_LIFETIME"
node_deflate_port="$port"

export NWS_INTEROP_PY_URL="ws://127.0.0.1:$py_port"
export NWS_INTEROP_NODE_URL="ws://127.0.0.1:$node_port"
export NWS_INTEROP_PY_DEFLATE_URL="ws://127.0.0.1:$py_deflate_port"
export NWS_INTEROP_NODE_DEFLATE_URL="ws://127.0.0.1:$node_deflate_port"

say "running cargo test --test interop against $NWS_INTEROP_PY_URL (python) and $NWS_INTEROP_NODE_URL (node)"
status=0
cargo test --test interop -- --ignored --test-threads=2 "$@" 2>&1 | tee "$tmp/test.log" || status=$?
if [ "$status" -eq 0 ] && ! grep -Eq '^test result: ok\. [1-9][0-9]* passed' "$tmp/test.log"; then
    say "no interop test ran (a filter that matches nothing?)"
    status=1
fi

names=(python node python-deflate node-deflate)
for i in 0 1 2 3; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
        say "the ${names[$i]} server stopped during the tests"
        status=1
    fi
done
if [ "$status" -ne 0 ]; then
    for name in "${names[@]}"; do
        say "--- $name server stderr (last 40 lines) ---"
        tail -n 40 "$tmp/$name.err" >&2 || true
    done
fi
exit "$status"
