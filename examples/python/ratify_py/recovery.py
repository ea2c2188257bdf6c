"""The participant-side loop that resolves in-doubt branches.

A prepared branch stays prepared until the coordinator tells the outcome. If that
message is lost (the participant crashed after voting YES, the coordinator failed
over), the participant pulls: each round lists the store's prepared branches and asks
``QueryOutcome`` for each. The coordinator never answers ABORTED from memory alone (it
logs the presumed abort first), so acting on the answer is safe:

    COMMITTED   → commit the branch       ABORTED    → roll it back
    IN_PROGRESS → ask again next round    FORGOTTEN  → leave it prepared, alert an operator

Logs: one INFO line per round that committed or rolled back something (a summary),
DEBUG for each branch asked about, WARNING/ERROR for what needs attention.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ratify_py.client import CoordinatorClient, RatifyError
from ratify_py.store import AccountStore

log = logging.getLogger("ratify_py.recovery")


@dataclass
class RecoveryReport:
    """What one round did."""

    committed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    in_doubt: int = 0
    needs_operator: int = 0
    errors: int = 0

    def is_empty(self) -> bool:
        """True when the round found nothing to do."""
        return self == RecoveryReport()


@dataclass
class RecoveryLoop:
    """Resolves the prepared branches of ``resources`` by asking ``client``.

    ``on_report`` is called after every round that did something (logs, tests).
    """

    resources: Mapping[str, AccountStore]
    client: CoordinatorClient
    on_report: Callable[[RecoveryReport], None] = lambda _r: None
    _stop: threading.Event = field(default_factory=threading.Event, init=False)

    def run_once(self) -> RecoveryReport:
        """One round over every resource. Never raises: problems are counted and
        retried next round."""
        report = RecoveryReport()
        for name, store in self.resources.items():
            try:
                xids = store.recover()
            except Exception:  # noqa: BLE001 - a round must not die; logged, retried
                log.exception("cannot list prepared branches of %s", name)
                report.errors += 1
                continue
            for xid in xids:
                try:
                    outcome, reason = self.client.query_outcome(xid)
                    if outcome == "COMMITTED":
                        store.commit(xid, one_phase=False)
                        report.committed.append(xid.render())
                    elif outcome == "ABORTED":
                        store.rollback(xid)
                        report.rolled_back.append(xid.render())
                    elif outcome == "FORGOTTEN":
                        log.error("outcome of %s is forgotten: an operator must decide", xid)
                        report.needs_operator += 1
                    else:
                        report.in_doubt += 1
                    log.debug("in-doubt %s: coordinator says %s (%s)", xid, outcome, reason)
                except RatifyError as e:
                    log.warning("cannot resolve %s now: %s", xid, e)
                    report.errors += 1
                except Exception:  # noqa: BLE001
                    log.exception("resolving %s failed", xid)
                    report.errors += 1
        if not report.is_empty():
            # One line per round that decided something; rounds that only found
            # branches still in progress are routine (debug).
            level = logging.INFO if report.committed or report.rolled_back or report.needs_operator else logging.DEBUG
            log.log(
                level,
                "recovery round: %d committed, %d rolled back, %d in progress, %d need an operator, %d errors",
                len(report.committed),
                len(report.rolled_back),
                report.in_doubt,
                report.needs_operator,
                report.errors,
            )
            self.on_report(report)
        return report

    def start(self, interval: float) -> threading.Thread:
        """Runs a round every ``interval`` seconds in a daemon thread until :meth:`stop`."""

        def loop() -> None:
            while not self._stop.wait(interval):
                self.run_once()

        thread = threading.Thread(target=loop, name="ratify-recovery", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stops the background loop after its current round."""
        self._stop.set()
