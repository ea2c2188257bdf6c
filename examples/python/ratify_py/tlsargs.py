"""The ``--tls-ca/--tls-cert/--tls-key`` arguments of the command-line tools."""

from __future__ import annotations

import argparse

from ratify_py.client import Tls


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key``: all three, or none (plaintext)."""
    p.add_argument("--tls-ca", help="CA certificate (PEM) the other side must be issued by")
    p.add_argument("--tls-cert", help="this process's certificate chain (PEM)")
    p.add_argument("--tls-key", help="its private key (PEM)")


def tls_from(args: argparse.Namespace) -> Tls | None:
    """The TLS material the arguments name, or None for plaintext.

    Raises:
        SystemExit: some but not all of the three are given.
    """
    given = [args.tls_ca, args.tls_cert, args.tls_key]
    if not any(given):
        return None
    if not all(given):
        raise SystemExit("--tls-ca, --tls-cert and --tls-key go together")
    return Tls.from_files(args.tls_ca, args.tls_cert, args.tls_key)
