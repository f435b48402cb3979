# -*- coding: utf-8 -*-
"""Starts the Autobahn TestSuite fuzzing server on the loopback interface only.

`wstest -m fuzzingserver` listens on every interface (and serves a web UI on 8080);
this does what that mode does, but binds the WebSocket port to 127.0.0.1 and starts no
web server. Python 2.7, run from the virtualenv that .ci/autobahn.sh sets up.

Usage: python fuzzingserver.py SPEC.json
"""
from __future__ import print_function

import json
import sys

# wstest imports this first: it picks the best reactor for the platform.
import autobahntestsuite.choosereactor  # noqa: F401
from twisted.internet import reactor

from autobahntestsuite import fuzzing


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    factory = fuzzing.FuzzingServerFactory(spec)
    port = reactor.listenTCP(factory.port, factory, backlog=50, interface="127.0.0.1")
    print("fuzzingserver listening on %s:%d" % (port.getHost().host, port.getHost().port))
    sys.stdout.flush()
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
