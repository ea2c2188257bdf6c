"""Command line: drive the Python client with JSON lines (used by the Rust tests).

    python -m ratify_py.driver --coordinator 127.0.0.1:7101 ... --db bank.sqlite

Reads one JSON request per line on stdin and answers one JSON line on stdout:

    {"op": "begin", "branches": [["host:port", "accounts"], ...], "timeout_ms": 10000,
     "traceparent": "00-<trace id>-<span id>-01"}      (traceparent optional)
        → {"ok": true, "gtrid": "...", "xids": ["52544659.<gtrid>.1", ...], "ms": 1.2}
    {"op": "debit" | "credit", "xid": "52544659...", "account": "acct1", "amount": 5}
        → {"ok": true}          (work on the Python store's branch, file --db)
    {"op": "commit" | "rollback", "gtrid": "...", "traceparent": "..."}   (optional)
        → {"ok": true, "outcome": "COMMITTED", "reason": "CLIENT_COMMIT", "detail": "", "ms": 3.4}
    {"op": "inspect", "xid": "...", "account": "acct1"}   (both optional)
        → {"ok": true, "total": 20000, "prepared": [...], "state": "prepared", "balance": 990}
    {"op": "stats"} → {"ok": true, "redirects": 1, "retries": 1, "leader": "host:port"}

A failed request answers {"ok": false, "kind": "<error class>", "error": "..."}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from ratify_py.client import ClientConfig, CoordinatorClient, Decision
from ratify_py.tlsargs import add_tls_arguments, tls_from
from ratify_py.store import AccountStore
from ratify_py.xid import Xid


@dataclass
class Driver:
    """Answers driver requests with one client and one store."""

    client: CoordinatorClient
    store: AccountStore

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """Runs one request; exceptions become ``ok: false`` answers."""
        ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "begin": self.begin,
            "debit": self.work,
            "credit": self.work,
            "commit": self.decide,
            "rollback": self.decide,
            "inspect": self.inspect,
            "stats": self.stats,
        }
        op = ops.get(str(req.get("op")))
        if op is None:
            return {"ok": False, "kind": "BadRequest", "error": f"unknown op {req.get('op')!r}"}
        try:
            return {"ok": True, **op(req)}
        except Exception as e:  # noqa: BLE001 - reported to the caller, who decides
            return {"ok": False, "kind": type(e).__name__, "error": str(e)}

    def begin(self, req: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        t = self.client.begin(
            [tuple(b) for b in req.get("branches", [])],
            req.get("timeout_ms", 0),
            traceparent=req.get("traceparent"),
        )
        ms = (time.perf_counter() - start) * 1000
        return {"gtrid": t.gtrid, "xids": [b.xid.render() for b in t.branches], "ms": ms}

    def work(self, req: dict[str, Any]) -> dict[str, Any]:
        branch = self.store.branch(Xid.parse(req["xid"]))
        (branch.debit if req["op"] == "debit" else branch.credit)(req["account"], req["amount"])
        return {}

    def decide(self, req: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        call = self.client.commit if req["op"] == "commit" else self.client.rollback
        d: Decision = call(req["gtrid"], traceparent=req.get("traceparent"))
        ms = (time.perf_counter() - start) * 1000
        return {"outcome": d.outcome, "reason": d.reason, "detail": d.detail, "ms": ms}

    def inspect(self, req: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "total": self.store.total(),
            "prepared": [x.render() for x in self.store.recover()],
        }
        if "xid" in req:
            out["state"] = self.store.state_of(Xid.parse(req["xid"]))
        if "account" in req:
            out["balance"] = self.store.balance(req["account"])
        return out

    def stats(self, _req: dict[str, Any]) -> dict[str, Any]:
        s = self.client.stats
        return {"redirects": s.redirects, "retries": s.retries, "leader": self.client.leader()}


def main(argv: list[str] | None = None) -> int:
    """Answers requests until stdin closes."""
    p = argparse.ArgumentParser(prog="ratify_py.driver", description=__doc__.split("\n")[0])
    p.add_argument("--coordinator", action="append", required=True, help="coordinator node host:port (repeat)")
    p.add_argument("--db", required=True, help="SQLite file of the Python participant's store")
    add_tls_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    config = ClientConfig(tls=tls_from(args))
    driver = Driver(CoordinatorClient(args.coordinator, config), AccountStore(args.db))
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except json.JSONDecodeError as e:
            answer: dict[str, Any] = {"ok": False, "kind": "BadRequest", "error": str(e)}
        else:
            answer = driver.handle(req)
        print(json.dumps(answer), flush=True)
    driver.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
