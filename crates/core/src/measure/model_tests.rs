//! The model manifest against the real coreutils pipeline, and every refusal.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

use super::model::{ModelError, manifest, manifest_limited, manifest_with};

/// The one-liner docs/formats.md §10 gives, run by `sh`; returns (manifest text, digest hex).
fn coreutils(dir: &Path) -> (String, String) {
    let run = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(dir)
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    };
    let list = r#"cd "$1" && find -L . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0r sha256sum --"#;
    let text = run(list);
    let digest = run(&format!("({list}) | sha256sum"));
    let digest = digest
        .strip_suffix("  -\n")
        .expect("sha256sum of stdin ends with `  -`")
        .to_string();
    (text, digest)
}

fn write(path: &Path, data: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, data).unwrap();
}

fn assert_same_as_coreutils(dir: &Path) {
    let m = manifest(dir).unwrap_or_else(|e| panic!("{e}"));
    let (text, digest) = coreutils(dir);
    assert_eq!(m.text(), text);
    assert_eq!(hex::encode(m.digest()), digest);
    assert_eq!(
        hex::encode(Sha256::digest(text.as_bytes())),
        hex::encode(m.digest())
    );
}

#[test]
fn equals_sha256sum_on_a_hugging_face_like_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("snapshot");
    let blobs = tmp.path().join("blobs");
    // Several reads per file, and a size that is not a multiple of the buffer.
    let big: Vec<u8> = (0..3 * (1 << 20) + 12345)
        .map(|i| (i % 251) as u8)
        .collect();
    write(&blobs.join("0123abcd"), &big);
    write(&blobs.join("shared/tokenizer.json"), br#"{"model":"bpe"}"#);
    write(&root.join("config.json"), b"{}");
    write(&root.join("weights-index.json"), b"[]");
    write(&root.join("weights/part 1.bin"), b"abc");
    write(&root.join("weights/sub/deeper/x"), b"");
    write(&root.join("données/modèle 日本.txt"), "non-ASCII\n");
    write(&root.join("-leading-dash"), b"-");
    write(&root.join(".hidden"), b"dot");
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    symlink(blobs.join("0123abcd"), root.join("model.safetensors")).unwrap();
    symlink("../config.json", root.join("weights/config-link.json")).unwrap();
    symlink(blobs.join("shared"), root.join("tok")).unwrap();
    assert_same_as_coreutils(&root);

    let m = manifest(&root).unwrap();
    let paths: Vec<&str> = m.files.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.contains(&"tok/tokenizer.json"));
    assert!(paths.contains(&"model.safetensors"));
    // '-' sorts before '/': the listing is not a depth-first walk.
    let dash = paths.iter().position(|p| *p == "weights-index.json");
    let slash = paths.iter().position(|p| *p == "weights/part 1.bin");
    assert!(dash < slash, "{paths:?}");
    assert_eq!(
        m.total_bytes,
        big.len() as u64 + [15u64, 2, 2, 3, 0, 10, 1, 3, 2].iter().sum::<u64>()
    );
}

#[test]
fn one_directory_reached_by_two_paths_is_not_a_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    write(&root.join("shared/w.bin"), b"weights");
    symlink("shared", root.join("a")).unwrap();
    symlink(root.join("shared"), root.join("b")).unwrap();
    assert_same_as_coreutils(&root);
    assert_eq!(manifest(&root).unwrap().files.len(), 3);
}

#[test]
fn the_root_may_itself_be_a_link() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("real/f"), b"x");
    symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
    assert_same_as_coreutils(&tmp.path().join("link"));
}

#[track_caller]
fn refused(dir: &Path) -> ModelError {
    match manifest(dir) {
        Ok(m) => panic!("measured {:?}", m.files),
        Err(e) => e,
    }
}

#[test]
fn a_link_back_to_an_ancestor_is_a_loop() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("a/b/f"), b"x");
    symlink("../..", tmp.path().join("a/b/up")).unwrap();
    let e = refused(tmp.path());
    assert!(
        matches!(&e, ModelError::Loop { path } if path.ends_with("a/b/up")),
        "{e}"
    );
}

#[test]
fn a_link_that_resolves_to_itself_is_a_loop() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("f"), b"x");
    symlink("me", tmp.path().join("me")).unwrap();
    let e = refused(tmp.path());
    assert!(
        matches!(&e, ModelError::Loop { path } if path.ends_with("me")),
        "{e}"
    );
}

#[test]
fn the_entry_limit_is_checked_while_a_directory_is_listed() {
    let tmp = tempfile::tempdir().unwrap();
    // Listed first, refused as soon as it is looked at: a walk that read every name before
    // counting would report it, not the limit.
    symlink("gone.bin", tmp.path().join("a")).unwrap();
    for n in 0..9 {
        write(&tmp.path().join(format!("f{n}")), b"x");
    }
    let e = manifest_limited(tmp.path(), &|_| {}, 3).unwrap_err();
    assert!(
        matches!(&e, ModelError::TooManyEntries { limit: 3, path } if path == tmp.path()),
        "{e}"
    );
    // Entries of every directory count against one budget; exactly the limit is fine.
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("d/one"), b"1");
    write(&tmp.path().join("d/two"), b"2");
    assert_eq!(
        manifest_limited(tmp.path(), &|_| {}, 3)
            .unwrap()
            .files
            .len(),
        2
    );
    let e = manifest_limited(tmp.path(), &|_| {}, 2).unwrap_err();
    assert!(matches!(&e, ModelError::TooManyEntries { .. }), "{e}");
}

#[test]
fn a_dangling_link_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("f"), b"x");
    symlink("gone.bin", tmp.path().join("model.bin")).unwrap();
    let e = refused(tmp.path());
    assert!(
        matches!(&e, ModelError::Dangling { path } if path.ends_with("model.bin")),
        "{e}"
    );
    assert!(e.to_string().contains("model.bin"), "{e}");
}

#[test]
fn fifos_sockets_and_devices_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("f"), b"x");
    let fifo = tmp.path().join("fifo");
    let ok = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(ok.success());
    let e = refused(tmp.path());
    assert!(
        matches!(&e, ModelError::NotRegular { path, kind: "fifo" } if *path == fifo),
        "{e}"
    );
    fs::remove_file(&fifo).unwrap();

    let sock = tmp.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let e = refused(tmp.path());
    assert!(
        matches!(&e, ModelError::NotRegular { path, kind: "socket" } if *path == sock),
        "{e}"
    );
    fs::remove_file(&sock).unwrap();

    symlink("/dev/null", tmp.path().join("null")).unwrap();
    let e = refused(tmp.path());
    assert!(
        matches!(
            &e,
            ModelError::NotRegular {
                kind: "character device",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn an_unreadable_file_is_refused() {
    // Root reads a chmod-000 file anyway; /proc/self/mem is a regular file that fails with
    // EIO at offset 0 (nothing is mapped there) for everyone.
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("f"), b"x");
    symlink("/proc/self/mem", tmp.path().join("mem")).unwrap();
    let e = refused(tmp.path());
    assert!(
        matches!(&e, ModelError::Io { path, .. } if path.ends_with("mem")),
        "{e}"
    );
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Set in the run of the test binary that [`rerun_unprivileged`] starts.
const UNPRIVILEGED_CHILD: &str = "TDX_CORE_TEST_UNPRIVILEGED_CHILD";

/// Runs test `name` (path below the crate) again in this test binary, as uid/gid
/// 65534 (nobody), and fails unless it ran there and passed. For checks root would bypass.
fn rerun_unprivileged(name: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(UNPRIVILEGED_CHILD, "1")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running as root, this test drops to uid 65534 with setpriv, which could not \
                 be started ({e}): apt-get install util-linux"
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // "1 passed" also proves the name matched a test: a filtered-out run exits 0 too.
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} as uid 65534: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

#[test]
fn an_unreadable_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let child = std::env::var_os(UNPRIVILEGED_CHILD).is_some();
    if running_as_root() {
        // Root lists a mode-000 directory anyway, and CI runs as root: run it as nobody,
        // who makes its own temporary directory (TMPDIR, /tmp in CI) below.
        assert!(!child, "setpriv left the child running as root");
        let module = module_path!().split_once("::").unwrap().1;
        rerun_unprivileged(&format!("{module}::an_unreadable_directory_is_refused"));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("f"), b"x");
    let locked = tmp.path().join("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let e = refused(tmp.path());
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(
        matches!(&e, ModelError::Io { path, .. } if *path == locked),
        "{e}"
    );
}

#[test]
fn a_file_whose_size_lies_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("f"), b"x");
    symlink("/proc/self/status", tmp.path().join("status")).unwrap();
    let e = refused(tmp.path());
    assert!(
        matches!(&e, ModelError::Changed { path, detail } if path.ends_with("status") && detail.contains("read")),
        "{e}"
    );
}

/// Runs `change` on `victim` between reading it and checking it again.
fn changed_mid_hash(change: impl Fn(&Path) + Sync) -> (PathBuf, ModelError) {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("weights/shard.bin");
    write(&victim, vec![7u8; 100_000]);
    write(&tmp.path().join("config.json"), b"{}");
    let hook = |p: &Path| {
        if p.ends_with("shard.bin") {
            change(p);
        }
    };
    match manifest_with(tmp.path(), &hook) {
        Ok(m) => panic!("measured {:?}", m.files),
        Err(e) => (victim, e),
    }
}

#[test]
fn a_file_growing_while_hashed_is_refused() {
    let (victim, e) = changed_mid_hash(|p| {
        use std::io::Write as _;
        let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(b"more").unwrap();
    });
    assert!(
        matches!(&e, ModelError::Changed { path, detail } if *path == victim && detail.contains("size 100000 became 100004")),
        "{e}"
    );
}

#[test]
fn a_file_rewritten_in_place_while_hashed_is_refused() {
    let (victim, e) = changed_mid_hash(|p| {
        use std::io::Write as _;
        let mut f = fs::OpenOptions::new().write(true).open(p).unwrap();
        f.write_all(&[8u8; 100_000]).unwrap();
        // Timestamps come from a coarse clock: pin one that surely differs.
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .unwrap();
    });
    assert!(
        matches!(&e, ModelError::Changed { path, detail } if *path == victim && detail.contains("modification time")),
        "{e}"
    );
}

#[test]
fn a_file_replaced_while_hashed_is_refused() {
    let (victim, e) = changed_mid_hash(|p| {
        let other = p.with_extension("new");
        fs::write(&other, vec![7u8; 100_000]).unwrap();
        fs::rename(&other, p).unwrap();
    });
    assert!(
        matches!(&e, ModelError::Changed { path, .. } if *path == victim),
        "{e}"
    );
}

#[test]
fn an_empty_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(refused(tmp.path()), ModelError::Empty { .. }));
    fs::create_dir_all(tmp.path().join("a/b")).unwrap();
    fs::create_dir_all(tmp.path().join("c")).unwrap();
    let e = refused(tmp.path());
    assert!(
        matches!(&e, ModelError::Empty { path } if path == tmp.path()),
        "{e}"
    );
    assert!(e.to_string().contains("nothing to measure"));
}

#[test]
fn a_file_or_a_missing_path_is_not_a_model_directory() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("f"), b"x");
    assert!(matches!(
        refused(&tmp.path().join("f")),
        ModelError::NotADirectory { .. }
    ));
    assert!(matches!(
        refused(&tmp.path().join("missing")),
        ModelError::Io { .. }
    ));
}

#[test]
fn names_sha256sum_would_escape_are_refused() {
    for name in ["back\\slash", "new\nline", "carriage\rreturn", "tab\there"] {
        let tmp = tempfile::tempdir().unwrap();
        write(&tmp.path().join("ok"), b"x");
        write(&tmp.path().join("sub").join(name), b"x");
        let e = refused(tmp.path());
        assert!(
            matches!(&e, ModelError::UnsupportedName { path, .. } if path.ends_with(name)),
            "{name:?}: {e}"
        );
    }
}

#[test]
fn a_top_level_file_named_dash_is_refused() {
    // `sha256sum -- -` still hashes standard input. Deeper, `dir/-` is an ordinary name.
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("-"), b"Y");
    let e = refused(tmp.path());
    assert!(
        matches!(&e, ModelError::UnsupportedName { path, .. } if path.ends_with("-")),
        "{e}"
    );
    fs::remove_file(tmp.path().join("-")).unwrap();
    write(&tmp.path().join("-/-"), b"Y");
    assert_same_as_coreutils(tmp.path());
}

#[test]
fn a_non_utf8_name_is_refused() {
    use std::os::unix::ffi::OsStrExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.bin");
    write(&tmp.path().join(name), b"x");
    let e = refused(tmp.path());
    assert!(matches!(&e, ModelError::NonUtf8 { .. }), "{e}");
}

/// Names drawn from few characters, so that paths share directories and `' '`, `-`, `.`
/// and `0` exercise the byte order against `/`.
fn name() -> impl Strategy<Value = String> {
    "[ a0.é-]{1,3}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn random_trees_equal_sha256sum(
        entries in prop::collection::vec(
            (prop::collection::vec(name(), 1..4), prop::collection::vec(any::<u8>(), 0..200), any::<bool>()),
            1..12,
        ),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("m");
        fs::create_dir(&root).unwrap();
        let mut files = 0;
        for (i, (parts, data, link)) in entries.iter().enumerate() {
            let path: PathBuf = parts.iter().fold(root.clone(), |p, c| p.join(c));
            if parts.len() == 1 && parts[0] == "-" {
                continue; // refused, see a_top_level_file_named_dash_is_refused
            }
            // A name already used for the other kind (file vs directory) is skipped.
            let Some(parent) = path.parent() else { continue };
            if fs::create_dir_all(parent).is_err() || fs::write(&path, data).is_err() {
                continue;
            }
            files += 1;
            if *link {
                symlink(&path, root.join(format!("l{i}"))).unwrap();
            }
        }
        prop_assume!(files > 0);
        let m = manifest(&root).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (text, digest) = coreutils(&root);
        prop_assert_eq!(m.text(), text);
        prop_assert_eq!(hex::encode(m.digest()), digest);
    }
}
