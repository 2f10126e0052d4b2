use std::{fs, os::unix::fs::MetadataExt, path::Path};

use enforcer_common::watch::{self, FileKey};

use super::{files, kernel};

/// A fresh directory under the temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("enforcer-watcher-{tag}-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const MMAP_FORMAT: &str = "\
name: sys_enter_mmap
ID: 174
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned long addr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long len;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long prot;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long flags;\toffset:40;\tsize:8;\tsigned:0;
\tfield:unsigned long fd;\toffset:48;\tsize:8;\tsigned:0;
\tfield:unsigned long off;\toffset:56;\tsize:8;\tsigned:0;

print fmt: \"addr: 0x%08lx\"
";

#[test]
fn mmap_format_is_read_not_assumed() {
    let f = kernel::parse_format(MMAP_FORMAT).unwrap();
    assert_eq!((f.prot, f.flags, f.fd), (32, 40, 48));
    // Moved fields are followed.
    let moved = MMAP_FORMAT.replace("offset:48", "offset:64");
    assert_eq!(kernel::parse_format(&moved).unwrap().fd, 64);
    // A field that is missing or not 8 bytes is refused, by name.
    let narrow = MMAP_FORMAT.replace("fd;\toffset:48;\tsize:8", "fd;\toffset:48;\tsize:4");
    assert_eq!(kernel::parse_format(&narrow), Err("fd"));
    let missing = MMAP_FORMAT.replace("unsigned long prot;", "unsigned long protection;");
    assert_eq!(kernel::parse_format(&missing), Err("prot"));
    assert_eq!(kernel::parse_format(""), Err("prot"));
}

#[test]
fn running_kernel_has_what_the_hooks_read() {
    // BTF and tracefs of this machine: the offsets the hooks get must exist and differ.
    let Ok(cfg) = kernel::config() else {
        // No BTF or no tracefs here: the watcher reports itself off; nothing more to check.
        return;
    };
    assert_eq!(
        (cfg.enabled, cfg.pause),
        (0, 0),
        "switched on only by the watcher"
    );
    assert_ne!(cfg.inode_ino, cfg.inode_sb);
    assert_ne!(cfg.task_files, cfg.task_ptrace);
    assert!(cfg.mmap_fd > cfg.mmap_prot);
}

#[test]
fn kernel_dev_matches_the_kernel_encoding() {
    // MKDEV(254, 0) and MKDEV(8, 17): what super_block::s_dev holds.
    assert_eq!(watch::kernel_dev(254, 0), 254 << 20);
    assert_eq!(watch::kernel_dev(8, 17), (8 << 20) | 17);
    // st_dev uses another encoding (major 254 minor 0 is 0xfe00): re-encoded.
    let key = kernel::key_from_stat(0xfe00, 42, 7);
    assert_eq!(
        key,
        FileKey {
            dev: 254 << 20,
            generation: 7,
            ino: 42
        }
    );
    // Large minors (st_dev keeps bits 8..19 of the minor elsewhere).
    let st_dev = libc::makedev(259, 0x1234);
    assert_eq!(
        kernel::key_from_stat(st_dev, 1, 0).dev,
        (259 << 20) | 0x1234
    );
}

#[test]
fn key_of_a_real_file() {
    let exe = std::env::current_exe().unwrap();
    let md = fs::metadata(&exe).unwrap();
    let key = kernel::key_of_path(&exe, true).unwrap();
    assert_eq!(key.file.ino, md.ino());
    assert_eq!(
        key.file.dev,
        watch::kernel_dev(libc::major(md.dev()), libc::minor(md.dev()))
    );
    assert_eq!(key.ctime(), Some((md.ctime(), md.ctime_nsec() as u32)));
    let without = kernel::key_of_path(&exe, false).unwrap();
    assert_eq!((without.file, without.ctime()), (key.file, None));
    assert!(kernel::key_of_path(Path::new("/nonexistent/enforcer"), true).is_none());
}

#[test]
fn parses_exec_mappings() {
    let text = b"\
55d0c0a00000-55d0c0a22000 r--p 00000000 fe:01 131090                     /usr/bin/python3.11
55d0c0a22000-55d0c0c00000 r-xp 00022000 fe:01 131090                     /usr/bin/python3.11
7f3c1a21f000-7f3c1a27c000 r-xp 0001f000 fe:01 1234567                    /tmp/dir with space/libssl.so.3
7f3c1a300000-7f3c1a301000 r-xp 00000000 00:01 2048                       /memfd:tls (deleted)
7f3c1a400000-7f3c1a401000 r-xp 00000000 00:00 0
7ffd4d5f0000-7ffd4d5f2000 r-xp 00000000 00:00 0                          [vdso]
garbage
";
    let got = crate::libraries::procfs::parse_maps(0, text);
    let names: Vec<_> = got.iter().map(|m| m.path.to_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "/usr/bin/python3.11",
            "/tmp/dir with space/libssl.so.3",
            "/memfd:tls (deleted)"
        ]
    );
    assert_eq!(got[1].inode, 1234567);
    assert_eq!((got[1].start, got[1].end), (0x7f3c1a21f000, 0x7f3c1a27c000));
}

#[test]
fn finds_a_file_through_proc() {
    // Our own program, as an exec event for this process would name it.
    let me = std::process::id();
    let exe = fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    let md = fs::metadata(&exe).unwrap();
    let key = FileKey {
        ino: md.ino(),
        ..FileKey::default()
    };
    let found = files::find(Path::new("/proc"), me, watch::kind::EXEC, -1, &key).unwrap();
    assert_eq!(found.path, exe, "the real path, not /proc/<pid>/exe");
    assert_eq!((found.st_dev, found.st_ino), (md.dev(), md.ino()));

    // An mmap event names an fd; while it is open it leads to the file.
    let dir = TempDir::new("find");
    let lib = dir.path().join("libfresh.so.1");
    fs::copy(&exe, &lib).unwrap();
    let file = fs::File::open(&lib).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let key = FileKey {
        ino: file.metadata().unwrap().ino(),
        ..FileKey::default()
    };
    let found = files::find(Path::new("/proc"), me, watch::kind::MMAP, fd, &key).unwrap();
    assert_eq!(found.path, fs::canonicalize(&lib).unwrap());

    // Deleted while open: still reachable, through /proc only.
    fs::remove_file(&lib).unwrap();
    let found = files::find(Path::new("/proc"), me, watch::kind::MMAP, fd, &key).unwrap();
    assert!(found.path.starts_with("/proc"), "{}", found.path.display());
    assert!(found.name.to_string_lossy().ends_with("(deleted)"));

    // Another inode behind the fd: not that file, and no mapping of it either.
    let other = FileKey {
        ino: key.ino + 1,
        ..key
    };
    assert!(files::find(Path::new("/proc"), me, watch::kind::MMAP, fd, &other).is_none());
    drop(file);
    assert!(files::find(Path::new("/proc"), me, watch::kind::MMAP, fd, &key).is_none());
}

#[test]
fn directory_candidates_are_shared_objects_and_programs() {
    let dir = TempDir::new("dirs");
    let p = dir.path();
    fs::write(p.join("libx.so.1"), b"x").unwrap();
    fs::write(p.join("notes.txt"), b"x").unwrap();
    fs::write(p.join("tool"), b"x").unwrap();
    let mut perms = fs::metadata(p.join("tool")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(p.join("tool"), perms).unwrap();
    std::os::unix::fs::symlink(p.join("libx.so.1"), p.join("libx.so")).unwrap();
    let found = files::in_dirs(&[p.to_path_buf(), p.to_path_buf()]);
    let mut names: Vec<_> = found
        .iter()
        .map(|f| f.path.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["libx.so.1", "tool"], "once per file, not notes.txt");
}

/// The generation tells a new file from a deleted one whose inode number it got (ext4 hands a
/// freed number to the next file created in the directory): what the watcher's memory of
/// examined files is keyed by besides (device, inode). See `go_tls`'s
/// `go_client_on_a_reused_inode_number_is_probed` for the agent-level regression test.
#[test]
fn a_reused_inode_number_is_another_file() {
    use super::{Entry, Examined};
    let dir = TempDir::new("reuse");
    let exe = std::env::current_exe().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::copy(&exe, &a).unwrap();
    let md_a = fs::metadata(&a).unwrap();
    let gen_a = files::generation_of(&a, &md_a);
    assert_eq!(
        gen_a.unwrap_or(0),
        kernel::key_of_path(&a, true).unwrap().file.generation,
        "one source for both keys"
    );
    let old = Entry {
        generation: gen_a,
        ctime: files::ctime(&md_a),
        state: Examined::NotTls,
    };
    assert!(!old.is_other_file(gen_a));
    assert!(
        !old.is_other_file(None),
        "no generation: the number decides"
    );
    fs::remove_file(&a).unwrap();
    fs::copy(&exe, &b).unwrap();
    let md_b = fs::metadata(&b).unwrap();
    let gen_b = files::generation_of(&b, &md_b);
    if md_b.ino() == md_a.ino() && gen_a.is_some() {
        assert!(old.is_other_file(gen_b), "{gen_a:?} {gen_b:?}");
    } else {
        eprintln!("this filesystem did not reuse the number or has no generations: half checked");
    }
    // Not the file `md` describes (replaced meanwhile): no generation.
    let elsewhere = fs::metadata(dir.path()).unwrap();
    assert_eq!(files::generation_of(&b, &elsewhere), None);
}

/// A file rewritten in place keeps its inode and generation; its `ctime` says it changed, and it
/// is then examined again, whatever it was found to be: a probed library too (its probes are
/// for the old content; `examine::settle_rewrite` keeps them only for the same content).
/// Unknown files never become known to the kernel hook. The kernel's key for it changes too.
#[test]
fn a_file_rewritten_in_place_is_examined_again() {
    use std::io::Write as _;

    use super::{Entry, Examined};
    let dir = TempDir::new("rewritten");
    let path = dir.path().join("libplain.so");
    fs::write(&path, b"not a library").unwrap();
    let md = fs::metadata(&path).unwrap();
    let (generation, ctime) = (files::generation_of(&path, &md), files::ctime(&md));
    let entry = |state| Entry {
        generation,
        ctime,
        state,
    };
    for state in [Examined::NotTls, Examined::Unknown, Examined::Library] {
        assert!(!entry(state).is_stale(generation, ctime), "{state:?}");
        assert!(
            !entry(state).is_stale(generation, None),
            "no ctime: not stale"
        );
    }
    // Rewritten through the same inode (no rename): the ctime moves on.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all(b"\x7fELF now").unwrap();
    drop(f);
    let now = fs::metadata(&path).unwrap();
    assert_eq!(now.ino(), md.ino(), "same inode");
    assert_eq!(
        files::generation_of(&path, &now),
        generation,
        "same generation"
    );
    let ctime_now = files::ctime(&now);
    assert_ne!(ctime_now, ctime);
    assert!(entry(Examined::NotTls).is_stale(generation, ctime_now));
    assert!(entry(Examined::Unknown).is_stale(generation, ctime_now));
    assert!(entry(Examined::Library).is_stale(generation, ctime_now));
    assert!(entry(Examined::Library).is_rewritten_library(generation, ctime_now));
    assert!(entry(Examined::Releasing).is_rewritten_library(generation, ctime_now));
    assert!(!entry(Examined::NotTls).is_rewritten_library(generation, ctime_now));
    assert!(!entry(Examined::Library).is_rewritten_library(generation, ctime));
    let (before, after) = (
        kernel::known_key(kernel::key_from_stat(md.dev(), md.ino(), 0), ctime),
        kernel::known_key(kernel::key_from_stat(now.dev(), now.ino(), 0), ctime_now),
    );
    assert_eq!(before.file, after.file);
    assert_ne!(before, after, "KNOWN_FILES holds the old version only");
    assert!(Examined::NotTls.is_settled() && Examined::Library.is_settled());
    assert!(!Examined::Unknown.is_settled());
}

#[test]
fn the_uid_a_library_slot_is_charged_to() {
    let proc_root = Path::new("/proc");
    // SAFETY: plain getters.
    let (pid, uid) = (std::process::id(), unsafe { libc::getuid() });
    assert_eq!(super::examine::real_uid(proc_root, pid), Some(uid));
    let fake = TempDir::new("uid");
    fs::create_dir_all(fake.0.join("7")).unwrap();
    fs::write(
        fake.0.join("7/status"),
        "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\n",
    )
    .unwrap();
    assert_eq!(
        super::examine::real_uid(&fake.0, 7),
        Some(1000),
        "the real uid"
    );
    assert_eq!(super::examine::real_uid(&fake.0, 8), None, "gone");
}
