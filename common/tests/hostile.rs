//! Hostile text at the parsers of the wire rules (issue 16, "hostile bytes"): any
//! input is refused or accepted without panicking, and whatever is accepted renders
//! back to exactly the input, within the alphabet a Postgres gid may hold. Cases: 256
//! per property in the suite; more with `PROPTEST_CASES=20000 cargo test -p
//! ratify-common --test hostile` (README, "Tests").

use proptest::prelude::*;
use ratify_common::wire::{self, Endpoint};
use ratify_common::xid::{validate_gtrid, Gtrid, Xid, MAX_RENDERED_LEN};
use ratify_proto::pb;

/// Mostly near-misses of the real forms, some anything at all.
fn gtrid_like() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9a-f]{32}", "[0-9a-fA-F]{30,34}", ".{0,40}"]
}

fn xid_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "52544659\\.[0-9a-f]{32}\\.[0-9]{1,9}",
        "[0-9a-f]{8}\\.[0-9a-f]{32}\\.[0-9a-z]{0,9}",
        ".{0,80}"
    ]
}

fn endpoint_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "(https?://)?[a-z0-9.-]{1,20}:[0-9]{1,6}/?",
        "(http://)?\\[[0-9a-f:.]{0,20}\\]:[0-9]{1,5}",
        "(http://)?[a-z:\\[\\]@/ ]{0,20}:[0-9]{0,6}",
        ".{0,300}"
    ]
}

proptest! {
    #[test]
    fn gtrids_round_trip_or_are_refused(s in gtrid_like()) {
        match s.parse::<Gtrid>() {
            Ok(g) => {
                prop_assert_eq!(g.to_string(), s.clone());
                prop_assert!(validate_gtrid(&s).is_ok());
            }
            Err(e) => {
                prop_assert!(validate_gtrid(&s).is_err());
                // The message quotes a short, escaped preview only (48 characters,
                // each at most `\u{10ffff}` escaped), however long the input.
                prop_assert!(e.to_string().len() < 100 + 48 * 10);
            }
        }
    }

    #[test]
    fn xids_round_trip_within_the_gid_alphabet(s in xid_like()) {
        if let Ok(x) = s.parse::<Xid>() {
            let rendered = x.render();
            prop_assert_eq!(&rendered, &s);
            prop_assert!(rendered.len() <= MAX_RENDERED_LEN);
            prop_assert!(rendered.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.'));
            prop_assert_eq!(Xid::from_pb(&x.to_pb()).ok(), Some(x));
        }
    }

    #[test]
    fn wire_xids_are_checked_field_by_field(
        format_id in prop_oneof![Just(ratify_proto::XID_FORMAT_ID), any::<u32>()],
        gtrid in gtrid_like(),
        bqual in prop_oneof!["[1-9][0-9]{0,7}", ".{0,12}"],
    ) {
        let wire = pb::Xid { format_id, gtrid: gtrid.clone(), bqual: bqual.clone() };
        if let Ok(x) = Xid::from_pb(&wire) {
            prop_assert_eq!(format_id, ratify_proto::XID_FORMAT_ID);
            prop_assert_eq!(x.gtrid(), gtrid.as_str());
            prop_assert_eq!(x.bqual(), bqual.as_str());
        }
    }

    #[test]
    fn accepted_endpoints_are_host_and_port_and_parse_back(s in endpoint_like()) {
        if let Ok(e) = Endpoint::parse(&s) {
            prop_assert!(s.len() <= wire::MAX_ENDPOINT_LEN);
            prop_assert!(e.host_port.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b)));
            let (host, port) = e.host_port.rsplit_once(':').expect("a port");
            prop_assert!(port.parse::<u16>().is_ok_and(|p| p != 0));
            prop_assert!(!host.is_empty());
            prop_assert_eq!(Endpoint::parse(&e.uri()).ok(), Some(e.clone()));
            prop_assert_eq!(Endpoint::parse(&e.host_port).ok().map(|x| x.host_port), Some(e.host_port.clone()));
        }
    }

    #[test]
    fn names_follow_the_alphabet(s in prop_oneof!["[A-Za-z0-9_.-]{0,70}", ".{0,70}"]) {
        let ok = (1..=wire::MAX_NAME_LEN).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        prop_assert_eq!(wire::is_valid_name(&s), ok);
    }
}
