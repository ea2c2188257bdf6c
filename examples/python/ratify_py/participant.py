"""Command line: host a SQLite account store as a Ratify participant.

    python -m ratify_py.participant --listen 127.0.0.1:0 --db bank.sqlite \\
        --coordinator 127.0.0.1:7101 --coordinator 127.0.0.1:7102 --accounts 20

On start it runs one recovery round (so branches left in doubt by a crash are resolved
before new work arrives), then serves and keeps a recovery loop running. It prints
JSON lines on stdout: ``{"event": "listening", "endpoint": ...}`` once serving, and
``{"event": "recovered", ...}`` for each recovery round that resolved something. Stops
on SIGTERM or SIGINT.

Logs go to stderr. At INFO (the default, ``--log-level`` or ``$RATIFY_PY_LOG_LEVEL``):
start-up, shutdown, recovery summaries and warnings; one line per branch call (with
its trace id) at DEBUG.

Tracing: each call's ``participant`` span continues the coordinator's trace (see
:mod:`ratify_py.tracing`). Spans are exported only when a provider is installed: with
``$RATIFY_PY_SPAN_LOG=<file>`` this command appends them to that file as JSON lines
(:mod:`ratify_py.spanlog`); otherwise tracing is a no-op.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading

from ratify_py import spanlog
from ratify_py.client import ClientConfig, CoordinatorClient
from ratify_py.tlsargs import add_tls_arguments, tls_from
from ratify_py.recovery import RecoveryLoop, RecoveryReport
from ratify_py.server import serve
from ratify_py.store import AccountStore

log = logging.getLogger("ratify_py.participant")

#: Default of ``--log-level``.
LOG_LEVEL_ENV = "RATIFY_PY_LOG_LEVEL"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="ratify_py.participant", description=__doc__.split("\n")[0])
    p.add_argument("--listen", required=True, help="host:port to serve on (port 0 picks one)")
    p.add_argument("--db", required=True, help="SQLite file of the account store")
    p.add_argument("--coordinator", action="append", required=True, help="coordinator node host:port (repeat)")
    p.add_argument("--resource", default="accounts", help="resource name (default: accounts)")
    p.add_argument("--accounts", type=int, default=20, help="create acct0..acctN-1 if missing")
    p.add_argument("--initial-balance", type=int, default=1000, help="opening balance of new accounts")
    p.add_argument("--recovery-interval", type=float, default=1.0, help="seconds between recovery rounds")
    add_tls_arguments(p)
    p.add_argument(
        "--log-level",
        default=os.environ.get(LOG_LEVEL_ENV, "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help=f"stderr log level (default: ${LOG_LEVEL_ENV} or INFO; DEBUG logs every branch call)",
    )
    return p.parse_args(argv)


def emit(event: dict[str, object]) -> None:
    """One JSON line on stdout."""
    print(json.dumps(event), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Runs the participant until SIGTERM/SIGINT."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="py-participant %(levelname)s %(name)s: %(message)s")
    provider = spanlog.install_from_env("ratify_py.participant")
    if provider is not None:
        log.info("writing spans to %s", os.environ[spanlog.SPAN_LOG_ENV])
    store = AccountStore(args.db)
    store.open_accounts([f"acct{i}" for i in range(args.accounts)], args.initial_balance)
    resources = {args.resource: store}
    tls = tls_from(args)
    client = CoordinatorClient(args.coordinator, ClientConfig(deadline=5.0, tls=tls))

    def report(r: RecoveryReport) -> None:
        if r.committed or r.rolled_back:
            emit({"event": "recovered", **dataclasses.asdict(r)})

    recovery = RecoveryLoop(resources, client, on_report=report)
    recovery.run_once()
    server, port = serve(resources, args.listen, tls=tls)
    host = args.listen.rpartition(":")[0]
    if tls is not None:
        # Under TLS the coordinator calls registered participants only.
        client.register_participant(f"{host}:{port}")
    emit({"event": "listening", "endpoint": f"{host}:{port}"})
    log.info("serving resource %s (%s) on %s:%d", args.resource, args.db, host, port)
    recovery.start(args.recovery_interval)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping")
    recovery.stop()
    server.stop(grace=1.0).wait()
    client.close()
    store.close()
    if provider is not None:
        provider.shutdown()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
