"""The xid's documented alphabet and rendered form."""

import pytest

from ratify_py.xid import Xid, XidError

GTRID = "0123456789abcdef0000000000000001"


def test_render_and_parse_round_trip() -> None:
    x = Xid(GTRID, "12")
    assert x.render() == f"52544659.{GTRID}.12"
    assert Xid.parse(x.render()) == x
    assert Xid.from_pb(x.to_pb()) == x


@pytest.mark.parametrize(
    "rendered",
    ["", f"52544658.{GTRID}.1", f"52544659.{GTRID.upper()}.1", f"52544659.{GTRID}.01",
     f"52544659.{GTRID}.1.2", f"52544659.{GTRID}.123456789", "52544659.'; drop.1"],
)
def test_malformed_xids_are_refused(rendered: str) -> None:
    with pytest.raises(XidError):
        Xid.parse(rendered)
