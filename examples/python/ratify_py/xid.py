"""The XA-shaped branch id, as documented in ``common.proto`` (message ``Xid``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Ratify's XA format id: ASCII "RTFY".
FORMAT_ID = 0x52544659

_GTRID = re.compile(r"[0-9a-f]{32}")
_BQUAL = re.compile(r"[1-9][0-9]{0,7}")


class XidError(ValueError):
    """A gtrid, bqual, format id or rendered xid outside the documented alphabet."""


def validate_gtrid(gtrid: str) -> str:
    """Returns ``gtrid`` if it is exactly 32 lowercase hex digits.

    Raises:
        XidError: otherwise.
    """
    if not isinstance(gtrid, str) or not _GTRID.fullmatch(gtrid):
        raise XidError(f"gtrid must be exactly 32 lowercase hex digits, got {gtrid!r:.48}")
    return gtrid


@dataclass(frozen=True, order=True)
class Xid:
    """A branch id: (format id 0x52544659, gtrid, bqual), validated on construction."""

    gtrid: str
    bqual: str

    def __post_init__(self) -> None:
        validate_gtrid(self.gtrid)
        if not isinstance(self.bqual, str) or not _BQUAL.fullmatch(self.bqual):
            raise XidError(
                f"bqual must be 1 to 8 decimal digits without a leading zero, got {self.bqual!r:.48}"
            )

    def render(self) -> str:
        """``52544659.<gtrid>.<bqual>``: only ``[0-9a-f.]``, at most 50 bytes."""
        return f"{FORMAT_ID:08x}.{self.gtrid}.{self.bqual}"

    def __str__(self) -> str:
        return self.render()

    @classmethod
    def parse(cls, rendered: str) -> "Xid":
        """Parses exactly the rendered form.

        Raises:
            XidError: anything else (other format id, upper case, extra dots).
        """
        parts = rendered.split(".") if isinstance(rendered, str) else []
        if len(rendered or "") > 50 or len(parts) != 3 or parts[0] != f"{FORMAT_ID:08x}":
            raise XidError(f"xid must look like 52544659.<gtrid>.<bqual>, got {rendered!r:.60}")
        return cls(parts[1], parts[2])

    @classmethod
    def from_pb(cls, msg: object) -> "Xid":
        """From a ``ratify.v1.Xid`` message, checking the format id.

        Raises:
            XidError: wrong format id or malformed parts.
        """
        format_id = getattr(msg, "format_id")
        if format_id != FORMAT_ID:
            raise XidError(f"xid format id must be 0x{FORMAT_ID:08x}, got 0x{format_id:08x}")
        return cls(getattr(msg, "gtrid"), getattr(msg, "bqual"))

    def to_pb(self) -> object:
        """As a ``ratify.v1.Xid`` message."""
        from ratify_py.pb import common_pb2

        return common_pb2.Xid(format_id=FORMAT_ID, gtrid=self.gtrid, bqual=self.bqual)
