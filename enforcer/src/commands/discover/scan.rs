//! One pass of the scan: the given functions, a chunk at a time, each chunk probed while the
//! workload runs once. The chunk size halves when the kernel refuses a chunk for lack of
//! resources (E2BIG, EMFILE, ENOMEM, ...); a chunk refused for anything else is bisected until
//! the functions that cannot be probed are found, reported and left out.

use std::time::Instant;

use aya::{
    maps::{HashMap, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use enforcer_common::discover::{self, COOKIE_EXPORTED, FnHits, MAX_DEPTH};

use super::{
    super::progress::Progress,
    Scanned,
    probes::{self, AttachFailure, Attached, Loaded, Target},
    workload::{RunEnd, Workload, describe_end},
};

/// Bytes of one `Stack` value of `DISCOVER_STACKS` (frames of 16 bytes, depth and padding).
const STACK_BYTES: usize = 16 * MAX_DEPTH + 8;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("interrupted by signal {0}")]
    Interrupted(i32),
    #[error("the kernel refuses even one function at a time: {0}")]
    NoRoom(String),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// What a pass saw.
#[derive(Default)]
pub struct PassResult {
    /// (function index, counters) of every function probed.
    pub hits: Vec<(usize, FnHits)>,
    /// Functions that could not be probed, with the kernel's reason.
    pub unprobeable: Vec<(usize, String)>,
    /// Workload runs that did not exit 0.
    pub bad_runs: Vec<String>,
    pub chunks: usize,
    /// Calls deeper than the per-thread stack.
    pub overflow: u64,
}

/// Progress and sizes of a pass.
pub struct Pass<'a> {
    pub label: &'static str,
    pub scanned: &'a Scanned,
    pub workload: &'a Workload,
    pub started: Instant,
}

impl Pass<'_> {
    /// Scans `indices` (into `scanned.functions`); `chunk` is the chunk size to start with and
    /// is left at the size the kernel accepted.
    pub fn run(
        &self,
        loaded: &mut Loaded,
        indices: &[usize],
        chunk: &mut usize,
    ) -> Result<PassResult, ScanError> {
        let mut result = PassResult::default();
        let mut pos = 0;
        let mut with_io = 0;
        // Every called function's counters on stderr (for debugging a workload).
        let dump = std::env::var_os("ENFORCER_DISCOVER_DUMP").is_some();
        // On a terminal a bar over the functions replaces the line per chunk; not while the
        // workload's own output is shown there (`--show-output`), which would break it up.
        let progress = Progress::on_terminal(
            "[discover] {msg} {bar:30} {pos}/{len} functions ({elapsed})",
            !self.workload.show_output,
        );
        while pos < indices.len() {
            if let Some(signal) = super::workload::interrupted() {
                return Err(ScanError::Interrupted(signal));
            }
            let end = (pos + *chunk).min(indices.len());
            let slice = &indices[pos..end];
            let targets: Vec<Target> = slice
                .iter()
                .enumerate()
                .map(|(slot, &i)| {
                    let f = &self.scanned.functions[i];
                    Target {
                        file: self.scanned.files[f.file].clone(),
                        offset: f.function.offset,
                        cookie: slot as u64
                            | if f.function.exported {
                                COOKIE_EXPORTED
                            } else {
                                0
                            },
                    }
                })
                .collect();
            reset(loaded, slice.len())?;
            let mut attached = Attached::default();
            let mut bad = Vec::new();
            if let Err(failure) = bisect(loaded, &targets, 0, &mut attached, &mut bad) {
                attached.release(&mut loaded.ebpf);
                if *chunk == 1 {
                    return Err(ScanError::NoRoom(failure.message));
                }
                *chunk = (*chunk / 2).max(1);
                progress.line(&format!(
                    "[discover] the kernel refused {} functions in one chunk ({}): trying {} at a time",
                    slice.len(),
                    failure.message,
                    *chunk
                ));
                continue;
            }
            result.chunks += 1;
            let remaining_chunks = (indices.len() - end).div_ceil(*chunk);
            let chunks = result.chunks + remaining_chunks;
            if progress.shown() {
                progress.set(
                    pos,
                    indices.len(),
                    format!(
                        "{} chunk {} of {chunks}, {with_io} with TCP I/O so far",
                        self.label, result.chunks
                    ),
                );
            } else {
                eprintln!(
                    "[discover] {} chunk {} of {chunks}: functions {}..{} of {}, {} with TCP I/O so far, {:.1} s",
                    self.label,
                    result.chunks,
                    pos + 1,
                    end,
                    indices.len(),
                    with_io,
                    self.started.elapsed().as_secs_f64()
                );
            }
            let end_state = self.workload.run();
            attached.release(&mut loaded.ebpf);
            match end_state? {
                RunEnd::Interrupted(signal) => return Err(ScanError::Interrupted(signal)),
                RunEnd::Exited(s) if s.success() => {}
                other => result.bad_runs.push(describe_end(&other)),
            }
            for (slot, hits) in read_hits(loaded, slice.len())?.into_iter().enumerate() {
                if hits.enclosed[0] + hits.enclosed[1] > 0 {
                    with_io += 1;
                }
                if dump && hits.calls > 0 {
                    progress.line(&format!(
                        "[discover] {}: {hits:?}",
                        self.scanned.functions[slice[slot]].function.name
                    ));
                }
                result.hits.push((slice[slot], hits));
            }
            result.overflow += read_overflow(loaded)?;
            for (slot, reason) in bad {
                progress.line(&format!(
                    "[discover] cannot probe {}: {reason}",
                    self.scanned.functions[slice[slot]].function.name
                ));
                result.unprobeable.push((slice[slot], reason));
            }
            pos = end;
            progress.set(
                pos,
                indices.len(),
                format!("{} chunk {} done", self.label, result.chunks),
            );
        }
        Ok(result)
    }
}

/// Attaches `targets` (slots `base..`), splitting a refused set in halves until the functions
/// the kernel will not probe are isolated in `bad`. Err: the kernel ran out of resources.
fn bisect(
    loaded: &mut Loaded,
    targets: &[Target],
    base: usize,
    attached: &mut Attached,
    bad: &mut Vec<(usize, String)>,
) -> Result<(), AttachFailure> {
    match probes::attach(loaded, targets) {
        Ok(links) => {
            attached.extend(links);
            Ok(())
        }
        Err(failure) if failure.is_resource() => Err(failure),
        Err(failure) if targets.len() == 1 => {
            bad.push((base, failure.message));
            Ok(())
        }
        Err(_) => {
            let half = targets.len() / 2;
            bisect(loaded, &targets[..half], base, attached, bad)?;
            bisect(loaded, &targets[half..], base + half, attached, bad)
        }
    }
}

fn map<'a>(loaded: &'a mut Loaded, name: &'static str) -> anyhow::Result<&'a mut aya::maps::Map> {
    loaded
        .ebpf
        .map_mut(name)
        .ok_or_else(|| anyhow::anyhow!("map {name} is missing from the eBPF object"))
}

/// Zeroes the counters of `slots` slots and forgets every thread's stack.
fn reset(loaded: &mut Loaded, slots: usize) -> anyhow::Result<()> {
    let cpus = nr_cpus().map_err(|(_, e)| e)?;
    let mut hits: PerCpuArray<&mut MapData, FnHits> =
        PerCpuArray::try_from(map(loaded, discover::HITS)?)?;
    for slot in 0..slots as u32 {
        hits.set(
            slot,
            PerCpuValues::try_from(vec![FnHits::default(); cpus])?,
            0,
        )?;
    }
    let mut stats: PerCpuArray<&mut MapData, u64> =
        PerCpuArray::try_from(map(loaded, discover::STATS)?)?;
    for index in 0..discover::stat::COUNT {
        stats.set(index, PerCpuValues::try_from(vec![0u64; cpus])?, 0)?;
    }
    let mut stacks: HashMap<&mut MapData, u32, [u8; STACK_BYTES]> =
        HashMap::try_from(map(loaded, discover::STACKS)?)?;
    let tids: Vec<u32> = stacks.keys().filter_map(Result::ok).take(1 << 16).collect();
    for tid in tids {
        let _ = stacks.remove(&tid);
    }
    Ok(())
}

/// The counters of the first `slots` slots, summed over CPUs.
fn read_hits(loaded: &mut Loaded, slots: usize) -> anyhow::Result<Vec<FnHits>> {
    let hits: PerCpuArray<&mut MapData, FnHits> =
        PerCpuArray::try_from(map(loaded, discover::HITS)?)?;
    let mut out = Vec::with_capacity(slots);
    for slot in 0..slots as u32 {
        let mut sum = FnHits::default();
        for h in hits.get(&slot, 0)?.iter() {
            sum.calls += h.calls;
            for d in 0..2 {
                sum.enclosed[d] += h.enclosed[d];
                sum.innermost[d] += h.innermost[d];
                sum.outermost[d] += h.outermost[d];
            }
            sum.calls_send_only += h.calls_send_only;
            sum.calls_recv_only += h.calls_recv_only;
            sum.calls_both += h.calls_both;
        }
        out.push(sum);
    }
    Ok(out)
}

fn read_overflow(loaded: &mut Loaded) -> anyhow::Result<u64> {
    let stats: PerCpuArray<&mut MapData, u64> =
        PerCpuArray::try_from(map(loaded, discover::STATS)?)?;
    Ok(stats.get(&discover::stat::OVERFLOW, 0)?.iter().sum())
}
