//! Tests of the audit log as a whole: exact bytes, the chain across reopen and rotation,
//! damage handling, verification errors, rate limiting and concurrent appends.

use super::writer::Fault;
use super::*;
use std::fs;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use time::macros::datetime;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(datetime!(2025-06-01 12:00:00 UTC)))
}

fn opts(clock: &Arc<ManualClock>) -> AuditOptions {
    AuditOptions {
        clock: clock.clone(),
        default_rate: None,
        ..AuditOptions::default()
    }
}

fn notice(i: usize) -> AuditEvent {
    AuditEvent::notice("test", &format!("record {i}"))
}

fn quote(i: u8) -> AuditEvent {
    AuditEvent::quote_issued(QuotePurpose::Challenge, &[i; 64], Some(1))
}

fn lines(path: &std::path::Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &std::path::Path, lines: &[String]) {
    fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

/// A single-file log of `n` notices; returns the directory and the file.
fn log_of(n: usize) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new().unwrap();
    let c = clock();
    let mut w = AuditWriter::open(dir.path(), opts(&c)).unwrap();
    for i in 0..n {
        w.append(notice(i)).unwrap();
        c.advance(Duration::from_millis(10));
    }
    let path = w.active_path().to_path_buf();
    (dir, path)
}

fn verify_err(paths: &[std::path::PathBuf]) -> String {
    verify_files(paths).unwrap_err().to_string()
}

const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// `printf '%s' "$LINE1" | sha256sum`, computed with coreutils, not with this code.
const H1: &str = "de65254d1993d50055221219e2e92e8995a817d9a72095c46288277d93ca63bf";
const H2: &str = "7b8be9f4108e32a64ef0d3914e8793c251f40fbb4680f2d72e9799c4d1630f2b";

#[test]
fn exact_line_format_worked_example() {
    let dir = TempDir::new().unwrap();
    let c = clock();
    let mut w = AuditWriter::open(dir.path(), opts(&c)).unwrap();
    assert_eq!(w.head(), GENESIS);
    let a1 = w.append(AuditEvent::policy_loaded(&[0x11; 32])).unwrap();
    c.advance(Duration::from_millis(1500));
    let a2 = w.append(AuditEvent::agent_started("0.1.0")).unwrap();

    let line1 = format!(
        r#"{{"seq":1,"time":"2025-06-01T12:00:00.000000Z","event":{{"type":"policy_loaded","digest":"{}"}},"prev":"{ZEROS}"}}"#,
        "11".repeat(32)
    );
    let line2 = format!(
        r#"{{"seq":2,"time":"2025-06-01T12:00:01.500000Z","event":{{"type":"agent_started","version":"0.1.0"}},"prev":"{H1}"}}"#
    );
    let path = dir.path().join("audit-00000001.log");
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        format!("{line1}\n{line2}\n")
    );
    assert_eq!(a1.seq, 1);
    assert_eq!(hex::encode(a1.line_hash), H1);
    assert_eq!(a2.seq, 2);
    assert_eq!(hex::encode(a2.line_hash), H2);
    assert_eq!(hex::encode(w.head()), H2);
    assert_eq!(hex::encode(line_hash(line1.as_bytes())), H1);
}

#[test]
fn time_is_utc_even_from_an_offset_clock() {
    let dir = TempDir::new().unwrap();
    let c = Arc::new(ManualClock::new(datetime!(2025-06-01 14:00:00.25 +02:00)));
    let mut w = AuditWriter::open(dir.path(), opts(&c)).unwrap();
    w.append(notice(0)).unwrap();
    let l = lines(w.active_path());
    assert!(
        l[0].contains(r#""time":"2025-06-01T12:00:00.250000Z""#),
        "{}",
        l[0]
    );
}

#[test]
fn chain_across_appends_and_reopen() {
    let dir = TempDir::new().unwrap();
    let c = clock();
    let head = {
        let mut w = AuditWriter::open(dir.path(), opts(&c)).unwrap();
        for i in 0..5 {
            w.append(notice(i)).unwrap();
        }
        w.head()
    };
    let mut w = AuditWriter::open(dir.path(), opts(&c)).unwrap();
    assert_eq!(w.last_seq(), 5);
    assert_eq!(w.head(), head);
    let a = w.append(notice(5)).unwrap();
    assert_eq!(a.seq, 6);
    let l = lines(w.active_path());
    assert!(l[5].ends_with(&format!(r#""prev":"{}"}}"#, hex::encode(head))));
    for i in 6..10 {
        w.append(notice(i)).unwrap();
    }
    let s = verify_files(&list_files(dir.path()).unwrap()).unwrap();
    assert_eq!((s.records, s.first_seq, s.last_seq), (10, 1, 10));
    assert_eq!(s.head, w.head());
    assert!(s.from_genesis);
}

#[test]
fn rotation_carries_the_chain_across_files() {
    let dir = TempDir::new().unwrap();
    let c = clock();
    let max = 700;
    let o = AuditOptions {
        max_bytes: max,
        ..opts(&c)
    };
    let mut w = AuditWriter::open(dir.path(), o.clone()).unwrap();
    for i in 0..20 {
        w.append(notice(i)).unwrap();
    }
    let files = list_files(dir.path()).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        assert!(
            fs::metadata(f).unwrap().len() <= max,
            "{f:?} over max_bytes"
        );
    }
    // Names are numbered from 1 and sorted chronologically.
    assert!(files[0].ends_with("audit-00000001.log"));
    assert!(files[1].ends_with("audit-00000002.log"));
    let last_of_first = lines(&files[0]).pop().unwrap();
    let first_of_second = lines(&files[1]).remove(0);
    assert!(first_of_second.ends_with(&format!(
        r#""prev":"{}"}}"#,
        hex::encode(line_hash(last_of_first.as_bytes()))
    )));
    let s = verify_files(&files).unwrap();
    assert_eq!((s.records, s.last_seq), (20, 20));

    // Reopen resumes in the newest file and keeps rotating.
    drop(w);
    let mut w = AuditWriter::open(dir.path(), o).unwrap();
    assert_eq!(w.active_path(), files.last().unwrap().as_path());
    for i in 20..40 {
        w.append(notice(i)).unwrap();
    }
    let s = verify_files(&list_files(dir.path()).unwrap()).unwrap();
    assert_eq!((s.records, s.last_seq), (40, 40));
    assert_eq!(s.head, w.head());
}

#[test]
fn retention_keeps_n_files_and_the_rest_still_verifies() {
    let dir = TempDir::new().unwrap();
    let c = clock();
    let o = AuditOptions {
        max_bytes: 500,
        keep: Some(2),
        ..opts(&c)
    };
    let mut w = AuditWriter::open(dir.path(), o).unwrap();
    for i in 0..30 {
        w.append(notice(i)).unwrap();
    }
    let files = list_files(dir.path()).unwrap();
    assert_eq!(files.len(), 2);
    assert!(!dir.path().join("audit-00000001.log").exists());
    let s = verify_files(&files).unwrap();
    assert!(!s.from_genesis);
    assert_eq!(s.last_seq, 30);
    assert!(s.first_seq > 1);
}

#[test]
fn empty_newest_file_after_a_crash_during_rotation_resumes_from_the_previous_one() {
    let (dir, path) = log_of(3);
    let head = line_hash(lines(&path)[2].as_bytes());
    fs::write(dir.path().join("audit-00000002.log"), b"").unwrap();
    let c = clock();
    let mut w = AuditWriter::open(dir.path(), opts(&c)).unwrap();
    assert_eq!((w.last_seq(), w.head()), (3, head));
    assert!(w.active_path().ends_with("audit-00000002.log"));
    w.append(notice(3)).unwrap();
    let s = verify_files(&list_files(dir.path()).unwrap()).unwrap();
    assert_eq!(s.records, 4);
}

#[test]
fn torn_last_line_is_refused_at_open_and_left_alone() {
    let (dir, path) = log_of(3);
    let good_len = fs::metadata(&path).unwrap().len();
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(br#"{"seq":4,"time":"2025-"#);
    fs::write(&path, &bytes).unwrap();

    let err = AuditWriter::open(dir.path(), opts(&clock())).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AuditError::Damaged { .. }), "{msg}");
    assert!(msg.contains("audit-00000001.log"), "{msg}");
    assert!(msg.contains("damaged"), "{msg}");
    assert!(msg.contains(&format!("truncate -s {good_len} ")), "{msg}");
    assert_eq!(
        fs::read(&path).unwrap(),
        bytes,
        "open must not repair the file"
    );

    // Following the advice recovers the chain.
    fs::write(&path, &bytes[..good_len as usize]).unwrap();
    let w = AuditWriter::open(dir.path(), opts(&clock())).unwrap();
    assert_eq!(w.last_seq(), 3);
}

#[test]
fn garbage_last_line_is_refused_at_open() {
    let (dir, path) = log_of(2);
    let mut l = lines(&path);
    l.push("not json".into());
    write_lines(&path, &l);
    let msg = AuditWriter::open(dir.path(), opts(&clock()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("last line is not a valid record"), "{msg}");
}

#[test]
fn verify_detects_an_edited_line() {
    let (_dir, path) = log_of(10);
    let mut l = lines(&path);
    l[3] = l[3].replace("record 3", "record X");
    write_lines(&path, &l);
    let msg = verify_err(&[path]);
    assert!(
        msg.contains("audit-00000001.log line 5: prev does not match the hash of line 4"),
        "{msg}"
    );
}

#[test]
fn verify_detects_a_deleted_middle_line() {
    let (_dir, path) = log_of(10);
    let mut l = lines(&path);
    l.remove(3);
    write_lines(&path, &l);
    let msg = verify_err(&[path]);
    assert!(
        msg.contains("audit-00000001.log line 4: seq is 5, expected 4"),
        "{msg}"
    );
}

#[test]
fn verify_detects_reordered_lines() {
    let (_dir, path) = log_of(10);
    let mut l = lines(&path);
    l.swap(6, 7);
    write_lines(&path, &l);
    let msg = verify_err(&[path]);
    assert!(
        msg.contains("audit-00000001.log line 7: seq is 8, expected 7"),
        "{msg}"
    );
}

#[test]
fn verify_detects_a_bad_seq() {
    let (_dir, path) = log_of(10);
    let mut l = lines(&path);
    l[5] = l[5].replace(r#"{"seq":6,"#, r#"{"seq":60,"#);
    write_lines(&path, &l);
    let msg = verify_err(&[path]);
    assert!(
        msg.contains("audit-00000001.log line 6: seq is 60, expected 6"),
        "{msg}"
    );
}

#[test]
fn verify_names_the_file_across_a_rotation() {
    let dir = TempDir::new().unwrap();
    let c = clock();
    let mut w = AuditWriter::open(
        dir.path(),
        AuditOptions {
            max_bytes: 700,
            ..opts(&c)
        },
    )
    .unwrap();
    for i in 0..12 {
        w.append(notice(i)).unwrap();
    }
    let files = list_files(dir.path()).unwrap();
    let mut first = lines(&files[0]);
    let n = first.len();
    let last = first.pop().unwrap().replace("record", "recorD");
    first.push(last);
    write_lines(&files[0], &first);
    let msg = verify_err(&files);
    let expected = format!(
        "{} line 1: prev does not match the hash of {} line {n}",
        files[1].display(),
        files[0].display()
    );
    assert!(msg.contains(&expected), "{msg}\nexpected: {expected}");

    // Files given in the wrong order are caught too.
    let mut reversed = files.clone();
    reversed.swap(0, 1);
    assert!(verify_files(&reversed).is_err());
}

#[test]
fn verify_reports_field_problems_and_torn_lines() {
    let (_dir, path) = log_of(3);
    let mut l = lines(&path);
    l[1] = l[1].replace(r#""time":"2025-06-01T"#, r#""time":"2025/06/01T"#);
    write_lines(&path, &l);
    let msg = verify_err(std::slice::from_ref(&path));
    assert!(
        msg.contains("line 2: field time: expected an RFC 3339 timestamp"),
        "{msg}"
    );

    let (_dir2, path2) = log_of(3);
    let mut bytes = fs::read(&path2).unwrap();
    bytes.pop();
    fs::write(&path2, &bytes).unwrap();
    let msg = verify_err(std::slice::from_ref(&path2));
    assert!(msg.contains("line 3: no trailing newline"), "{msg}");

    let (_dir3, path3) = log_of(2);
    let mut l = lines(&path3);
    l[0] = l[0].replacen('{', r#"{"extra":1,"#, 1);
    write_lines(&path3, &l);
    let msg = verify_err(std::slice::from_ref(&path3));
    assert!(msg.contains(r#"line 1: unexpected field "extra""#), "{msg}");

    let empty = TempDir::new().unwrap();
    let p = empty.path().join("audit-00000001.log");
    fs::write(&p, b"").unwrap();
    assert!(matches!(
        verify_files(&[p]),
        Err(AuditVerifyError::NoRecords { files: 1 })
    ));
}

#[test]
fn verify_rejects_a_forged_start() {
    let (_dir, path) = log_of(3);
    let mut l = lines(&path);
    l.remove(0);
    // Dropping the first line leaves seq 2 with a real prev: accepted as a partial chain...
    write_lines(&path, &l);
    let s = verify_files(std::slice::from_ref(&path)).unwrap();
    assert!(!s.from_genesis);
    // ...but claiming to be the start with a zero prev and the wrong seq is not.
    l[0] = l[0].replacen(&l[0][l[0].len() - 66..l[0].len() - 2], ZEROS, 1);
    write_lines(&path, &l);
    let msg = verify_err(&[path]);
    assert!(msg.contains("line 1: prev is 64 zeros"), "{msg}");
}

#[test]
fn deleting_the_tail_is_detected_against_a_later_head() {
    let (dir, path) = log_of(10);
    let c = clock();
    let mut w = AuditWriter::open(dir.path(), opts(&c)).unwrap();
    let head = w.head();
    for i in 10..15 {
        w.append(notice(i)).unwrap();
    }
    let files = list_files(dir.path()).unwrap();
    let m = verify_against_head(&files, head).unwrap();
    assert_eq!(m.seq, 10);
    assert_eq!(m.at.as_ref().map(|a| a.line), Some(10));
    assert_eq!(verify_against_head(&files, GENESIS).unwrap().seq, 0);

    // Cut the log back to 8 records: still a valid chain, but not one containing `head`.
    let mut l = lines(&path);
    l.truncate(8);
    write_lines(&path, &l);
    assert_eq!(verify_files(&files).unwrap().records, 8);
    let err = verify_against_head(&files, head).unwrap_err();
    assert!(
        matches!(err, AuditVerifyError::HeadNotFound { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&hex::encode(head)), "{err}");
}

#[test]
fn rate_limit_drops_then_writes_one_summary_and_never_drops_security_records() {
    let dir = TempDir::new().unwrap();
    let c = clock();
    let mut o = opts(&c);
    o.default_rate = Some(RateLimit::new(1.0, 2.0));
    // Even a zero-rate override cannot touch security records.
    o.rate_limits
        .insert("quote_issued".into(), Some(RateLimit::new(0.0, 0.0)));
    let mut w = AuditWriter::open(dir.path(), o).unwrap();

    let results: Vec<_> = (0..5).map(|i| w.append(notice(i))).collect();
    assert!(results[0].is_ok() && results[1].is_ok());
    for r in &results[2..] {
        assert!(r.as_ref().unwrap_err().is_rate_limited());
    }
    for i in 0..50 {
        w.append(quote(i)).unwrap();
    }
    w.append(AuditEvent::rtmr_extended(3, &[7; 48], "model_manifest"))
        .unwrap();
    w.append(AuditEvent::certificate_rotated(
        "expiry",
        &[1; 32],
        datetime!(2025-06-02 00:00 UTC),
    ))
    .unwrap();
    w.append(AuditEvent::policy_loaded(&[2; 32])).unwrap();
    assert_eq!(w.last_seq(), 2 + 53);

    // Not refilled: no summary yet, and still limited.
    assert_eq!(w.flush_suppressed().unwrap(), 0);
    c.advance(Duration::from_secs(1));
    let a = w.append(notice(99)).unwrap();
    let l = lines(w.active_path());
    let summary = &l[l.len() - 2];
    assert!(
        summary.contains(r#""event":{"type":"suppressed","event_type":"notice","count":3,"#),
        "{summary}"
    );
    assert_eq!(
        l.iter()
            .filter(|x| x.contains(r#""type":"suppressed""#))
            .count(),
        1
    );
    assert_eq!(a.seq, 57);

    // A flood that stops: the summary is written by the periodic flush once a token is back.
    assert!(w.append(notice(100)).unwrap_err().is_rate_limited());
    assert!(w.append(notice(101)).unwrap_err().is_rate_limited());
    assert_eq!(w.flush_suppressed().unwrap(), 0);
    c.advance(Duration::from_secs(2));
    assert_eq!(w.flush_suppressed().unwrap(), 1);
    assert_eq!(w.flush_suppressed().unwrap(), 0, "one summary per flood");
    let l = lines(w.active_path());
    assert!(
        l.last().unwrap().contains(r#""count":2,"#),
        "{}",
        l.last().unwrap()
    );

    // Shutdown writes what is pending even without a token.
    c.advance(Duration::from_secs(5));
    for i in 0..4 {
        let _ = w.append(notice(200 + i));
    }
    w.finish().unwrap();
    assert!(
        lines(w.active_path())
            .last()
            .unwrap()
            .contains(r#""count":2,"#)
    );
    verify_files(&list_files(dir.path()).unwrap()).unwrap();
}

#[test]
fn a_failed_write_is_an_error_and_leaves_no_half_line() {
    for fault in [Fault::ShortWrite(17), Fault::Sync] {
        let (dir, path) = log_of(3);
        let c = clock();
        let mut w = AuditWriter::open(dir.path(), opts(&c)).unwrap();
        let before = fs::read(&path).unwrap();
        let head = w.head();
        w.fault = Some(fault);
        let err = w.append(quote(1)).unwrap_err();
        assert!(matches!(err, AuditError::Write { seq: 4, .. }), "{err}");
        assert!(err.to_string().contains("audit-00000001.log"), "{err}");
        assert_eq!(
            fs::read(&path).unwrap(),
            before,
            "{fault:?}: file must be as before"
        );
        assert_eq!((w.head(), w.last_seq()), (head, 3));
        // The log stays usable and the chain continues without a gap.
        assert_eq!(w.append(quote(2)).unwrap().seq, 4);
        assert_eq!(verify_files(&[path]).unwrap().records, 4);
    }
}

#[test]
fn a_failure_that_cannot_be_undone_stops_the_writer_and_is_caught_at_open() {
    let (dir, path) = log_of(2);
    let c = clock();
    let mut w = AuditWriter::open(dir.path(), opts(&c)).unwrap();
    w.fault = Some(Fault::ShortWriteNoUndo(9));
    let err = w.append(quote(1)).unwrap_err();
    assert!(matches!(err, AuditError::Broken { .. }), "{err}");
    assert!(err.to_string().contains("record seq 3 failed"), "{err}");
    let err = w.append(quote(2)).unwrap_err();
    assert!(matches!(err, AuditError::Broken { .. }), "{err}");
    assert!(err.to_string().contains("partial record"), "{err}");
    drop(w);
    // The partial line is still there; the next start refuses it rather than chaining on it.
    let err = AuditWriter::open(dir.path(), opts(&c)).unwrap_err();
    assert!(matches!(err, AuditError::Damaged { .. }), "{err}");
    assert!(verify_err(&[path]).contains("line 3: no trailing newline"));
}

#[test]
fn a_rotation_that_cannot_create_its_file_is_an_error() {
    let dir = TempDir::new().unwrap();
    let logdir = dir.path().join("log");
    let c = clock();
    let mut w = AuditWriter::open(
        &logdir,
        AuditOptions {
            max_bytes: 100,
            ..opts(&c)
        },
    )
    .unwrap();
    w.append(quote(0)).unwrap();
    let head = w.head();
    fs::remove_dir_all(&logdir).unwrap();
    let err = w.append(quote(1)).unwrap_err();
    assert!(matches!(err, AuditError::Io { op: "create", .. }), "{err}");
    assert!(err.to_string().contains("audit-00000002.log"), "{err}");
    assert_eq!((w.head(), w.last_seq()), (head, 1));
}

#[test]
fn oversized_lines_are_refused_before_writing() {
    // Free text is capped, so the largest possible event stays far below the line limit.
    let long = "x".repeat(10_000);
    let e = AuditEvent::verification_result(&long, &long, Some(&long));
    assert!(e.to_json().len() < MAX_LINE_BYTES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_keep_one_valid_chain() {
    let dir = TempDir::new().unwrap();
    let o = AuditOptions {
        max_bytes: 64 * 1024,
        ..AuditOptions::default()
    };
    let log = AuditLog::open(dir.path(), o).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100u8 {
                log.append(AuditEvent::quote_issued(
                    QuotePurpose::Challenge,
                    &[t ^ i; 64],
                    None,
                ))
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let files = list_files(dir.path()).unwrap();
    assert!(files.len() > 1, "expected rotation under load");
    let s = verify_files(&files).unwrap();
    assert_eq!((s.records, s.first_seq, s.last_seq), (800, 1, 800));
    assert_eq!(s.head, log.head());
    assert_eq!(log.last_seq(), 800);
    log.close().await.unwrap();
    assert!(matches!(
        log.append(quote(0)).await,
        Err(AuditError::WriterGone)
    ));
}

#[tokio::test]
async fn async_log_writes_due_summaries_on_its_own_and_resumes() {
    let dir = TempDir::new().unwrap();
    let c = clock();
    let mut o = opts(&c);
    o.rate_limits
        .insert("notice".into(), Some(RateLimit::new(1.0, 1.0)));
    o.flush_interval = Duration::from_millis(10);
    let log = AuditLog::open(dir.path(), o.clone()).await.unwrap();
    assert_eq!(log.head(), GENESIS);
    log.append(notice(0)).await.unwrap();
    assert!(log.append(notice(1)).await.unwrap_err().is_rate_limited());
    c.advance(Duration::from_secs(1));
    let mut waited = 0;
    while log.last_seq() < 2 && waited < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(
        log.last_seq(),
        2,
        "the writer thread should write the summary by itself"
    );
    let head = log.head();
    drop(log);

    let log = AuditLog::open(dir.path(), o).await.unwrap();
    assert_eq!((log.head(), log.last_seq()), (head, 2));
    let files = list_files(dir.path()).unwrap();
    assert!(lines(&files[0])[1].contains(r#""type":"suppressed""#));
}

#[tokio::test]
async fn async_open_reports_a_damaged_log() {
    let (dir, path) = log_of(1);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{");
    fs::write(&path, bytes).unwrap();
    let err = AuditLog::open(dir.path(), opts(&clock()))
        .await
        .unwrap_err();
    assert!(matches!(err, AuditError::Damaged { .. }), "{err}");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_files_never_panic_verify(
            a in proptest::collection::vec(any::<u8>(), 0..2048),
            b in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let dir = TempDir::new().unwrap();
            let p1 = dir.path().join("a");
            let p2 = dir.path().join("b");
            fs::write(&p1, &a).unwrap();
            fs::write(&p2, &b).unwrap();
            let _ = verify_files(&[p1.clone(), p2.clone()]);
            let _ = verify_against_head(&[p1, p2], [0; 32]);
        }

        #[test]
        fn json_shaped_lines_never_panic_verify(
            seq in any::<i128>(),
            time in "[0-9TZ:.+-]{0,30}",
            prev in "[0-9a-fA-F]{0,70}",
            event in prop_oneof![Just("{}".to_string()), Just(r#"{"type":"x"}"#.to_string()), Just("[]".to_string()), Just("null".to_string())],
        ) {
            let dir = TempDir::new().unwrap();
            let p = dir.path().join("a");
            let line = format!(r#"{{"seq":{seq},"time":"{time}","event":{event},"prev":"{prev}"}}"#);
            fs::write(&p, format!("{line}\n{line}\n")).unwrap();
            let _ = verify_files(&[p]);
        }

        /// Any change to any byte before the last line breaks the chain.
        #[test]
        fn any_change_before_the_last_line_is_detected(pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
            let (_dir, path) = log_of(6);
            let mut bytes = fs::read(&path).unwrap();
            let last_start = bytes[..bytes.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
            let i = pos.index(last_start);
            bytes[i] ^= xor;
            fs::write(&path, &bytes).unwrap();
            prop_assert!(verify_files(&[path]).is_err());
        }
    }
}
