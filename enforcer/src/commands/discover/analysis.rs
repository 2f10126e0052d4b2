//! From counters to candidates. The rule (also in docs/discover.md and the command's output):
//!
//! 1. Every kernel TCP send or receive made by a thread while it is inside probed functions of
//!    the library is credited to the **outermost exported** function on that thread's stack (the
//!    outermost probed one if none is exported): the library entry point the application called.
//!    Inner functions (record layer, BIO / transport callbacks, the function at the top of the
//!    stack at `tcp_sendmsg`) are internal and not candidates.
//! 2. Such an entry point is classified by what its calls did, from the kernel's direction:
//!    calls that both sent and received are handshakes (connection setup needs both), calls
//!    that only sent are writes, calls that only received are reads. An entry point takes the
//!    role most of its calls had (ties: handshake, then write, then read).
//! 3. The profile keeps, per role, the exported entry points with at least 1/20 of the calls of
//!    that role's busiest one; the others are listed as seen but left out.

use enforcer_common::discover::FnHits;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Handshake,
    Write,
    Read,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Handshake, Role::Write, Role::Read];

    pub fn name(self) -> &'static str {
        match self {
            Role::Handshake => "handshake",
            Role::Write => "write",
            Role::Read => "read",
        }
    }

    /// Calls of `h` that had this role.
    pub fn calls(self, h: &FnHits) -> u64 {
        match self {
            Role::Handshake => h.calls_both,
            Role::Write => h.calls_send_only,
            Role::Read => h.calls_recv_only,
        }
    }
}

/// An entry point: a function some TCP event was credited to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Index into the scanned functions.
    pub index: usize,
    pub exported: bool,
    pub hits: FnHits,
    pub role: Role,
    /// Part of the profile (exported, and busy enough within its role).
    pub kept: bool,
}

impl Entry {
    /// Events credited to it: (sends, receives).
    pub fn events(&self) -> (u64, u64) {
        (self.hits.outermost[0], self.hits.outermost[1])
    }
}

/// Entry points among `hits` (function index, counters of the final pass), busiest first.
pub fn entries(hits: &[(usize, FnHits, bool)]) -> Vec<Entry> {
    let mut out: Vec<Entry> = hits
        .iter()
        .filter(|(_, h, _)| h.outermost[0] + h.outermost[1] > 0)
        .map(|&(index, hits, exported)| Entry {
            index,
            exported,
            hits,
            role: primary_role(&hits),
            kept: false,
        })
        .collect();
    for role in Role::ALL {
        let busiest = out
            .iter()
            .filter(|e| e.role == role && e.exported)
            .map(|e| role.calls(&e.hits))
            .max()
            .unwrap_or(0);
        for e in out.iter_mut().filter(|e| e.role == role && e.exported) {
            let calls = role.calls(&e.hits);
            e.kept = calls > 0 && calls.saturating_mul(20) >= busiest;
        }
    }
    out.sort_by_key(|e| {
        (
            e.role,
            std::cmp::Reverse(e.role.calls(&e.hits)),
            std::cmp::Reverse(e.hits.outermost[0] + e.hits.outermost[1]),
            e.index,
        )
    });
    out
}

/// The role most calls had; ties go to handshake, then write. A function credited with events
/// whose calls never returned during the run (all counters 0) is classified by its events.
fn primary_role(h: &FnHits) -> Role {
    let counts = Role::ALL.map(|r| r.calls(h));
    if counts.iter().all(|c| *c == 0) {
        return match (h.outermost[0] > 0, h.outermost[1] > 0) {
            (true, true) => Role::Handshake,
            (true, false) => Role::Write,
            _ => Role::Read,
        };
    }
    let best = counts.iter().copied().max().unwrap_or(0);
    Role::ALL
        .into_iter()
        .zip(counts)
        .find(|(_, c)| *c == best)
        .map_or(Role::Read, |(r, _)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(outer: [u64; 2], both: u64, send: u64, recv: u64) -> FnHits {
        FnHits {
            calls: both + send + recv,
            enclosed: outer,
            innermost: [0; 2],
            outermost: outer,
            calls_send_only: send,
            calls_recv_only: recv,
            calls_both: both,
        }
    }

    #[test]
    fn curl_like_run() {
        let hits = [
            (1, h([3, 4], 2, 0, 1), true),  // SSL_connect: handshake
            (2, h([1, 0], 0, 1, 0), true),  // SSL_write
            (3, h([0, 5], 0, 0, 5), true),  // SSL_read
            (4, h([1, 0], 0, 1, 0), true),  // SSL_shutdown: a write too
            (5, h([9, 9], 0, 0, 0), false), // inner, never outermost in reality: not exported
            (6, h([0, 0], 0, 0, 0), true),  // never credited
        ];
        let e = entries(&hits);
        let roles: Vec<(usize, Role, bool)> = e.iter().map(|e| (e.index, e.role, e.kept)).collect();
        assert_eq!(
            roles,
            vec![
                (1, Role::Handshake, true),
                (5, Role::Handshake, false),
                (2, Role::Write, true),
                (4, Role::Write, true),
                (3, Role::Read, true),
            ]
        );
    }

    #[test]
    fn rare_entry_points_are_left_out() {
        let hits = [
            (1, h([100, 0], 0, 100, 0), true),
            (2, h([2, 0], 0, 2, 0), true),
            (3, h([5, 0], 0, 5, 0), true),
        ];
        let kept: Vec<usize> = entries(&hits)
            .iter()
            .filter(|e| e.kept)
            .map(|e| e.index)
            .collect();
        assert_eq!(kept, vec![1, 3]);
    }

    #[test]
    fn ties_prefer_handshake_then_write() {
        assert_eq!(primary_role(&h([1, 1], 1, 1, 1)), Role::Handshake);
        assert_eq!(primary_role(&h([1, 1], 0, 1, 1)), Role::Write);
        assert_eq!(primary_role(&h([0, 1], 0, 0, 0)), Role::Read);
    }
}
