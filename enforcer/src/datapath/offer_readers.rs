//! The ClientHello readers (`enforcer-ebpf/src/offer.rs`): loaded beside the packet program
//! that tail-calls them and put in that program's table before it is attached, like the
//! ServerHello readers (`posture_readers.rs`, whose loading this reuses).

use anyhow::Result;
use aya::Ebpf;
use enforcer_common::offer;

use super::posture_readers::install;

/// The packet programs that tail-call a ClientHello reader, with their table and reader.
const READERS: [(&str, &str, &str); 5] = [
    ("enforcer_egress", offer::OFFER_TC, offer::READER_TC),
    ("enforcer_ingress_tc", offer::OFFER_TC, offer::READER_TC),
    ("enforcer_ingress", offer::OFFER_XDP, offer::READER_XDP),
    (
        "enforcer_ingress_nofrags",
        offer::OFFER_XDP_NOFRAGS,
        offer::READER_XDP_NOFRAGS,
    ),
    ("enforcer_cg_judge", offer::OFFER_CG, offer::READER_CG),
];

/// Loads the ClientHello reader of packet program `caller` (once) and puts it in its table; a
/// caller that tail-calls none is left alone.
pub fn load_for(ebpf: &mut Ebpf, caller: &str) -> Result<()> {
    let Some((_, table, reader)) = READERS.iter().find(|(c, _, _)| *c == caller) else {
        return Ok(());
    };
    install(ebpf, table, reader, "ClientHello", caller)
}
