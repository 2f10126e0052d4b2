//! What the classifiers (and the readers they tail-call) return, as `BPF_PROG_TEST_RUN` gives
//! it back to the tests (a `u32`).

/// A packet let through: `TC_ACT_UNSPEC`, which a tcx link reads as `TCX_NEXT`. The packet goes
/// on to the programs and filters after ours on the hook, and passes if none is left. Not
/// `TC_ACT_OK`: that ends the hook, so a tool whose classic filter sits at a higher preference
/// than ours (or whose tcx program comes after ours) would never see a packet we let through.
pub const PASS: i32 = -1;
/// [`PASS`] as a test run returns it.
pub const PASS_U32: u32 = PASS as u32;
/// A packet dropped: `TC_ACT_SHOT` (`TCX_DROP`).
pub const SHOT_U32: u32 = 2;
