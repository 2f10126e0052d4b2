//! Verdicts of the XDP (ingress, `enforcer_ingress`) and tc (egress, `enforcer_egress`) programs
//! on crafted frames, run in the kernel through `BPF_PROG_TEST_RUN`.
//!
//! Root only, and deliberately not skipped otherwise: a run that cannot load the programs fails.
//! Each test loads its own copy of the object (its own maps), so tests run in parallel without
//! sharing the blocklist or the drop counters.
//!
//! Every frame is run through both programs. The blocklist holds a flow as the kernel hooks
//! store it: (local, remote). XDP keys a frame as (local = destination, remote = source), tc as
//! (local = source, remote = destination); so an *inbound* frame of a blocked flow is dropped
//! by XDP only and an *outbound* one by tc only. After every run the `STATS` drop counters are
//! read back and must have grown by exactly the number of drops seen.

#[path = "packet_filters/edge_cases.rs"]
mod edge_cases;
#[path = "packet_filters/harness.rs"]
mod harness;
#[path = "packet_filters/headers.rs"]
mod headers;
mod packets;
#[path = "packet_filters/quic.rs"]
mod quic;
#[path = "packet_filters/truncation.rs"]
mod truncation;
