#!/usr/bin/env bash
# Autobahn TestSuite conformance run: cases 1.* to 13.* of the fuzzing server (12.* and
# 13.* are permessage-deflate's, 216 cases) against examples/autobahn_client.rs, with the
# crate's default settings (deflate offered).
#
#   bash .ci/autobahn.sh
#
# Needs: cargo, python3, a CPython 2.7 (found through pyenv, or AUTOBAHN_PYTHON2=/path),
# and PyPI. autobahntestsuite is Python 2.7 software: it is installed, with the pins in
# .ci/autobahn/requirements-py27.txt, into a virtualenv under the cache directory
# (AUTOBAHN_CACHE, default ~/.cache/nwebsocket-autobahn), and reused while those pins and
# the launcher are unchanged. The server listens on 127.0.0.1 only, on a free port
# (or AUTOBAHN_PORT). Reports go to target/autobahn/reports/clients (AUTOBAHN_OUT).
#
# Prints the per-section counts; exits non-zero if any case FAILED, if the server could
# not start, or if the client could not run; the server is always stopped.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/.ci/autobahn
CACHE=${AUTOBAHN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nwebsocket-autobahn}
OUT=${AUTOBAHN_OUT:-$ROOT/target/autobahn}
VENV=$CACHE/venv-py27
VIRTUALENV_PIN="virtualenv==20.21.1" # the last virtualenv that creates Python 2.7 environments
CLIENT_TIMEOUT=${AUTOBAHN_CLIENT_TIMEOUT:-1200}

say() { printf 'autobahn.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- a CPython 2.7 -----------------------------------------------------------------------
is_py27() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' >/dev/null 2>&1; }

find_python2() {
    local candidates=() root
    [ -n "${AUTOBAHN_PYTHON2:-}" ] && candidates+=("$AUTOBAHN_PYTHON2")
    root=$(pyenv root 2>/dev/null || true)
    for r in "$root" "${PYENV_ROOT:-}" "$HOME/.pyenv"; do
        [ -d "$r/versions" ] || continue
        # newest 2.7.x first
        while IFS= read -r v; do
            candidates+=("$r/versions/$v/bin/python2.7")
        done < <(ls "$r/versions" | grep -E '^2\.7(\.[0-9]+)?$' | sort -t. -k3,3nr)
    done
    candidates+=("$(command -v python2.7 || true)" "$(command -v python2 || true)")
    for c in "${candidates[@]}"; do
        if is_py27 "$c"; then echo "$c"; return 0; fi
    done
    return 1
}

# --- the virtualenv ----------------------------------------------------------------------
setup_venv() {
    local py2 stamp want
    want=$(cat "$HERE/requirements-py27.txt" "$HERE/fuzzingserver.py" | sha256sum | cut -d' ' -f1)
    stamp=$VENV/.nwebsocket-stamp
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        say "using the virtualenv at $VENV"
        return 0
    fi
    py2=$(find_python2) || die "no CPython 2.7 found (pyenv install 2.7.18, or set AUTOBAHN_PYTHON2)"
    say "creating a Python 2.7 virtualenv at $VENV from $py2"
    command -v python3 >/dev/null || die "python3 is needed to create the virtualenv"
    rm -rf "$VENV" "$CACHE/virtualenv-tool"
    mkdir -p "$CACHE"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$CACHE/virtualenv-tool" "$VIRTUALENV_PIN" \
        || die "could not install $VIRTUALENV_PIN"
    PYTHONPATH=$CACHE/virtualenv-tool python3 -m virtualenv --quiet --no-download \
        --app-data "$CACHE/virtualenv-app-data" -p "$py2" "$VENV" \
        || die "could not create the virtualenv"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-python-version-warning \
        --no-warn-script-location \
        -r "$HERE/requirements-py27.txt" \
        || die "could not install autobahntestsuite"
    echo "$want" >"$stamp"
}

# --- run ---------------------------------------------------------------------------------
SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT
trap 'exit 130' INT TERM

START=$(date +%s)
setup_venv

cd "$ROOT"
say "building the client"
cargo build --release --quiet --example autobahn_client

PORT=${AUTOBAHN_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
URL="ws://127.0.0.1:$PORT"
rm -rf "$OUT"
mkdir -p "$OUT/reports/clients"
python3 - "$OUT/fuzzingserver.json" "$URL" "$OUT/reports/clients" <<'EOF'
import json, sys
path, url, outdir = sys.argv[1:]
spec = {
    "url": url,
    "outdir": outdir,
    "options": {"failByDrop": False},
    "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*", "10.*",
              "12.*", "13.*"],
    "exclude-cases": [],
    "exclude-agent-cases": {},
}
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
EOF

say "starting the fuzzing server on $URL"
# The launcher's own output (one line per case) goes to a log, shown if something fails.
(cd "$OUT" && exec "$VENV/bin/python" -u "$HERE/fuzzingserver.py" "$OUT/fuzzingserver.json") \
    >"$OUT/fuzzingserver.log" 2>&1 &
SERVER_PID=$!
ready=
for _ in $(seq 600); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    if grep -q '^fuzzingserver listening on' "$OUT/fuzzingserver.log"; then ready=1; break; fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    tail -n 40 "$OUT/fuzzingserver.log" >&2 || true
    die "the fuzzing server did not start"
fi

say "running the client"
client_rc=0
RUST_LOG=${RUST_LOG:-warn} timeout "$CLIENT_TIMEOUT" \
    cargo run --release --quiet --example autobahn_client -- "$URL" || client_rc=$?
stop_server
if [ "$client_rc" -ne 0 ]; then
    say "the client exited with $client_rc (124: killed after ${CLIENT_TIMEOUT}s)"
    tail -n 20 "$OUT/fuzzingserver.log" >&2 || true
fi
say "ran in $(( $(date +%s) - START )) s; reports in $OUT/reports/clients"

# --- the report --------------------------------------------------------------------------
report_rc=0
python3 - "$OUT/reports/clients" <<'EOF' || report_rc=$?
import json, os, re, sys
from collections import Counter, OrderedDict

outdir = sys.argv[1]
index_path = os.path.join(outdir, "index.json")
if not os.path.exists(index_path):
    print("autobahn: no report index at %s" % index_path)
    sys.exit(2)
with open(index_path) as f:
    index = json.load(f)
if "nwebsocket" not in index:
    print("autobahn: no results for agent nwebsocket in %s (agents: %s)" % (index_path, list(index)))
    sys.exit(2)
cases = index["nwebsocket"]

KINDS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]

def key(case_id):
    return [int(p) for p in case_id.split(".")]

sections = OrderedDict()
for cid in sorted(cases, key=key):
    sections.setdefault(cid.split(".")[0], Counter())[cases[cid]["behavior"]] += 1

header = "%-8s" % "section" + "".join("%15s" % k for k in KINDS) + "%8s" % "total"
print(header)
print("-" * len(header))
total = Counter()
for sec, counts in sections.items():
    total.update(counts)
    print("%-8s" % (sec + ".*") + "".join("%15d" % counts[k] for k in KINDS) + "%8d" % sum(counts.values()))
print("-" * len(header))
print("%-8s" % "all" + "".join("%15d" % total[k] for k in KINDS) + "%8d" % sum(total.values()))
others = set(total) - set(KINDS)
if others:
    print("other behaviors: %s" % dict((k, total[k]) for k in others))

def details(cid):
    info = cases[cid]
    try:
        with open(os.path.join(outdir, info["reportfile"])) as f:
            return json.load(f)
    except Exception as e:  # the index alone still names the case
        return {"description": "(no case report: %s)" % e}

failed = [c for c in sorted(cases, key=key) if cases[c]["behavior"] == "FAILED"]
close_failed = [c for c in sorted(cases, key=key)
                if cases[c]["behavior"] != "FAILED" and cases[c].get("behaviorClose") == "FAILED"]
close_notes = [c for c in sorted(cases, key=key)
               if cases[c].get("behaviorClose") not in ("OK", "INFORMATIONAL", "FAILED", None)]

for title, ids in (("FAILED", failed), ("closing behavior FAILED", close_failed)):
    for cid in ids:
        d = details(cid)
        print("\n%s %s: %s" % (title, cid, re.sub(r"\s+", " ", d.get("description", "")).strip()))
        print("  expectation: %s" % re.sub(r"\s+", " ", d.get("expectation", "")).strip())
        print("  result: %s" % d.get("result", ""))
        print("  closing: %s (%s), remote close code %s"
              % (d.get("resultClose", ""), cases[cid].get("behaviorClose"), cases[cid].get("remoteCloseCode")))
if close_notes:
    print("\nclosing behavior not OK (not counted as failures): %s"
          % ", ".join("%s %s" % (c, cases[c]["behaviorClose"]) for c in close_notes))

bad = len(failed) + len(close_failed)
print("\nautobahn: %d passed, %d failed, %d skipped"
      % (sum(total.values()) - total["FAILED"] - total["UNIMPLEMENTED"] - len(close_failed),
         bad, total["UNIMPLEMENTED"]))
sys.exit(1 if bad else 0)
EOF

if [ "$client_rc" -ne 0 ]; then die "the client failed (exit $client_rc)"; fi
if [ "$report_rc" -ne 0 ]; then die "conformance failures (see above)"; fi
