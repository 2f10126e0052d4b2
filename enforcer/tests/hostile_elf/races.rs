//! Files that change while they are read: rewritten and truncated during `identify`, renamed
//! over during `discover`.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::{DISCOVER_BOUND, StopOnDrop, TempDir, discover_dir, identify, openssl, serial};

/// Tiny deterministic PRNG (xorshift64*): the test needs variety, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One file, rewritten and truncated by another thread while `identify` reads it.
///
/// Phase 1 only ever cuts the file and writes its own bytes back, so every byte `identify` can
/// read is right: whatever it reports must be exactly the reference answer. Phase 2 also writes
/// garbage and grows the file with zeros: any answer, in time, inside the file.
#[test]
fn file_rewritten_while_identified() {
    let _s = serial();
    let dir = TempDir::new("rewrite");
    let mut sources = vec![openssl(|_| {}).bytes];
    if let Ok(real) = fs::read("/usr/lib/x86_64-linux-gnu/libssl.so.3") {
        sources.push(real);
    }
    for (n, content) in sources.into_iter().enumerate() {
        let path = dir.write(&format!("librewrite{n}.so"), &content);
        let reference = identify(&path).unwrap().expect("reference identification");
        let content = Arc::new(content);
        for garbage in [false, true] {
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let (path, content, stop) = (path.clone(), content.clone(), stop.clone());
                thread::spawn(move || {
                    let f = OpenOptions::new().write(true).open(&path).unwrap();
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 + n as u64);
                    let len = content.len() as u64;
                    let mut ops = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let cut = rng.below(len);
                        f.set_len(cut).unwrap();
                        if garbage && rng.below(3) == 0 {
                            let at = rng.below(len);
                            let junk: Vec<u8> =
                                (0..rng.below(4096)).map(|_| rng.next() as u8).collect();
                            f.write_all_at(&junk, at).unwrap();
                        }
                        if garbage && rng.below(4) == 0 {
                            f.set_len(len + rng.below(len)).unwrap();
                        }
                        thread::yield_now();
                        // Write the rest back in a few chunks.
                        let mut pos = cut;
                        while pos < len {
                            let end = (pos + 1 + rng.below(len / 4 + 1)).min(len);
                            f.write_all_at(&content[pos as usize..end as usize], pos)
                                .unwrap();
                            pos = end;
                        }
                        if garbage {
                            f.set_len(len).unwrap();
                        }
                        ops += 1;
                    }
                    f.write_all_at(&content, 0).unwrap();
                    f.set_len(len).unwrap();
                    ops
                })
            };
            let _stop = StopOnDrop(stop.clone());
            let started = Instant::now();
            let (mut same, mut none, mut errors, mut calls) = (0, 0, 0, 0);
            while started.elapsed() < Duration::from_secs(3) {
                calls += 1;
                match identify(&path) {
                    Ok(Some(id)) if !garbage => {
                        assert_eq!(
                            (&id.family, &id.probes),
                            (&reference.family, &reference.probes),
                            "a torn read made wrong probes"
                        );
                        // The identity (size, hash, version) is read through the same
                        // descriptor, and a file changed meanwhile is not identified: never the
                        // identity of a later moment.
                        assert_eq!(
                            id.identity, reference.identity,
                            "identity of other contents"
                        );
                        same += 1;
                    }
                    Ok(Some(id)) => {
                        let max = 2 * content.len() as u64;
                        assert!(id.probes.iter().all(|p| p.file_offset < max), "{id:?}");
                        same += usize::from(id == reference);
                    }
                    Ok(None) => none += 1,
                    Err(_) => errors += 1,
                }
            }
            stop.store(true, Ordering::Relaxed);
            let ops = writer.join().expect("writer thread");
            eprintln!(
                "rewrite source {n} garbage={garbage}: {calls} identify calls during {ops} \
                 rewrites: {same} as reference, \
                 {none} none, {errors} errors"
            );
            assert!(ops > 0 && calls > 0);
        }
    }
}

/// A library renamed over (as package upgrades do) again and again while `discover` runs: it is
/// either missed or reported exactly as it is, never as what the garbage renamed over it says,
/// and a library beside it is always found.
#[test]
fn library_replaced_during_discover() {
    let _s = serial();
    let dir = TempDir::new("replace");
    let good = openssl(|_| {});
    let stable = dir.write("libstable.so", &good.bytes);
    let stable = fs::canonicalize(stable).unwrap();
    let swap_path = dir.write("libswap.so.3", &good.bytes);
    let reference = identify(&swap_path).unwrap().unwrap();
    let variants: Vec<Vec<u8>> = vec![
        good.bytes.clone(),
        good.bytes[..good.bytes.len() / 2].to_vec(),
        b"not an ELF file".to_vec(),
        openssl(|s| s.big_endian = true).bytes,
        Vec::new(),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let renamer = {
        let (dir, stop) = (dir.0.clone(), stop.clone());
        thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let tmp = dir.join(format!(".tmp{}", i % 4));
                let mut f = File::create(&tmp).unwrap();
                f.write_all(&variants[i % variants.len()]).unwrap();
                drop(f);
                fs::rename(&tmp, dir.join("libswap.so.3")).unwrap();
                i += 1;
            }
            i
        })
    };
    let _stop = StopOnDrop(stop.clone());
    let started = Instant::now();
    let (mut runs, mut seen) = (0, 0);
    while started.elapsed() < Duration::from_secs(3) {
        let (found, _) = discover_dir(&dir.0, DISCOVER_BOUND);
        runs += 1;
        assert!(found.iter().any(|l| l.path == stable), "{found:?}");
        for lib in found.iter().filter(|l| l.path != stable) {
            assert!(lib.path.ends_with("libswap.so.3"), "{lib:?}");
            assert_eq!(lib.family, reference.family);
            // The big-endian variant is a library too, with its own offsets.
            if lib.identity.sha256 == reference.identity.sha256 {
                assert_eq!(lib.probes, reference.probes);
                seen += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let renames = renamer.join().expect("renamer thread");
    eprintln!("{runs} discover runs during {renames} renames; the good library seen {seen} times");
    assert!(renames > 0);
}
