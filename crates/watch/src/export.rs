//! The archive's JSON-lines export (docs/formats.md §14): each record with its blobs inlined
//! byte for byte, its `prev_hash` and `hash`, so an auditor handed the export alone checks its
//! chain (`tdx-agent evidence verify records.jsonl`) as the database's is checked.

use std::io::{BufRead, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::archive::{ArchiveError, NewRecord, walk};
use super::chain::{BlobDigests, Stored, Verified, Walk};
use tdx_core::encoding::{b64, from_b64};
use tdx_core::verify::time::{format_unix, parse_instant};

/// One record per line. A JSON blob (evidence, challenge, report) is inlined as the JSON it is,
/// when it is one object on one line, which is how the watcher writes them; anything else goes
/// in the `_base64` (or `report_text`) field beside it, so no byte is re-encoded or lost.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    seq: i64,
    target: String,
    url: String,
    /// RFC 3339, exactly as `format_unix` writes the record's unix seconds.
    at: String,
    verdict: String,
    failed_check: Option<String>,
    /// DER, base64.
    certificate: Option<String>,
    evidence: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    evidence_base64: Option<String>,
    challenge: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    challenge_base64: Option<String>,
    /// Hex.
    nonce: Option<String>,
    /// The policy file's text.
    policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy_base64: Option<String>,
    report: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    report_text: Option<String>,
    verifier_version: String,
    /// Hex: the record before it (the chain's anchor for the first).
    prev_hash: String,
    hash: String,
}

/// The longest line [`verify_export`] reads: far over any evidence document the watcher keeps.
const MAX_LINE: u64 = 64 << 20;

/// `bytes` as one JSON object on one line, if that is what they are, byte for byte.
fn inline_json(bytes: &[u8]) -> Option<Box<RawValue>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let one_line_object = text.starts_with('{')
        && text.ends_with('}')
        && !text.bytes().any(|b| b == b'\n' || b == b'\r');
    one_line_object
        .then(|| RawValue::from_string(text.to_owned()).ok())
        .flatten()
}

/// A JSON blob as `(inline, base64)`: one of them, or neither when absent.
fn blob_fields(bytes: Option<&[u8]>) -> (Option<Box<RawValue>>, Option<String>) {
    match bytes {
        None => (None, None),
        Some(b) => match inline_json(b) {
            Some(raw) => (Some(raw), None),
            None => (None, Some(b64(b))),
        },
    }
}

impl Line {
    fn of(stored: &Stored) -> Self {
        let r = &stored.record;
        let (evidence, evidence_base64) = blob_fields(r.evidence.as_deref());
        let (challenge, challenge_base64) = blob_fields(r.challenge.as_deref());
        let (policy, policy_base64) = match std::str::from_utf8(&r.policy) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (None, Some(b64(&r.policy))),
        };
        let (report, report_text) = match inline_json(r.report.as_bytes()) {
            Some(raw) => (Some(raw), None),
            None => (None, Some(r.report.clone())),
        };
        Self {
            seq: stored.seq,
            target: r.target.clone(),
            url: r.url.clone(),
            at: format_unix(r.at),
            verdict: r.verdict.clone(),
            failed_check: r.failed_check.clone(),
            certificate: r.certificate.as_deref().map(b64),
            evidence,
            evidence_base64,
            challenge,
            challenge_base64,
            nonce: r.nonce.as_ref().map(hex::encode),
            policy,
            policy_base64,
            report,
            report_text,
            verifier_version: r.verifier_version.clone(),
            prev_hash: hex::encode(&stored.prev_hash),
            hash: hex::encode(&stored.hash),
        }
    }

    /// The record this line holds; `Err` names the field that is not what [`Line::of`] writes.
    fn into_stored(self) -> Result<Stored, String> {
        let base64 = |field: &str, text: &str| {
            from_b64(text).map_err(|e| format!("{field} is not base64: {e}"))
        };
        let json_blob = |field: &str,
                         raw: Option<Box<RawValue>>,
                         encoded: Option<String>|
         -> Result<Option<Vec<u8>>, String> {
            match (raw, encoded) {
                (Some(_), Some(_)) => Err(format!("both {field} and {field}_base64 are set")),
                (Some(raw), None) => Ok(Some(raw.get().as_bytes().to_vec())),
                (None, Some(e)) => base64(&format!("{field}_base64"), &e).map(Some),
                (None, None) => Ok(None),
            }
        };
        let hex = |field: &str, text: &str| {
            hex::decode(text).map_err(|e| format!("{field} is not hex: {e}"))
        };
        let at = parse_instant(&self.at).map_err(|e| format!("at: {e}"))?;
        if format_unix(at) != self.at {
            return Err(format!(
                "at {:?} is not written as the export writes instants ({:?})",
                self.at,
                format_unix(at)
            ));
        }
        let policy = match (self.policy, self.policy_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(e)) => base64("policy_base64", &e)?,
            _ => return Err("exactly one of policy and policy_base64 must be set".into()),
        };
        let report = match (self.report, self.report_text) {
            (Some(raw), None) => raw.get().to_owned(),
            (None, Some(text)) => text,
            _ => return Err("exactly one of report and report_text must be set".into()),
        };
        Ok(Stored {
            seq: self.seq,
            record: NewRecord {
                target: self.target,
                url: self.url,
                at,
                verdict: self.verdict,
                failed_check: self.failed_check,
                certificate: self
                    .certificate
                    .map(|c| base64("certificate", &c))
                    .transpose()?,
                evidence: json_blob("evidence", self.evidence, self.evidence_base64)?,
                challenge: json_blob("challenge", self.challenge, self.challenge_base64)?,
                nonce: self.nonce.map(|n| hex("nonce", &n)).transpose()?,
                policy,
                report,
                verifier_version: self.verifier_version,
            },
            prev_hash: hex("prev_hash", &self.prev_hash)?,
            hash: hex("hash", &self.hash)?,
        })
    }
}

/// Every record as one JSON object per line, oldest first, checked as it is written (a record
/// that is not intact stops the export with the error [`crate::verify`] gives, after the lines
/// before it). Returns what was exported, the head included.
pub fn export(path: &Path, out: &mut dyn Write) -> Result<Verified, ArchiveError> {
    walk(path, None, |r| {
        let line = serde_json::to_string(&Line::of(r))
            .map_err(|e| r.error(format!("cannot be written as JSON: {e}")))?;
        writeln!(out, "{line}").map_err(|e| ArchiveError::Write(e.to_string()))
    })
}

/// Check an export as [`crate::verify`] checks the archive: the records follow each other from
/// the first one's `prev_hash` (the archive's anchor when it was exported), each line gives its
/// hash; with `pinned`, that head is in it.
pub fn verify_export(path: &Path, pinned: Option<[u8; 32]>) -> Result<Verified, ArchiveError> {
    let mut walk: Option<Walk> = None;
    read_export(path, |number, record| {
        let bad = |detail: String| ArchiveError::Chain(format!("export line {number}: {detail}"));
        let walk = match &mut walk {
            Some(w) => w,
            None => {
                // The first record starts where the archive's chain started when exported: at
                // its beginning (32 zero bytes) or at the anchor a prune left.
                if record.seq < 1 {
                    return Err(bad(format!(
                        "seq {} is not a record's (they start at 1)",
                        record.seq
                    )));
                }
                let anchor_seq = record.seq - 1;
                let anchor_hash = if anchor_seq == 0 {
                    [0; 32]
                } else {
                    <[u8; 32]>::try_from(record.prev_hash.as_slice())
                        .map_err(|_| bad("prev_hash is not 32 bytes".into()))?
                };
                walk.insert(Walk::from_anchor(anchor_seq, anchor_hash, pinned)?)
            }
        };
        walk.step(&record, &BlobDigests::of(&record.record))
    })?;
    match walk {
        Some(w) => w.finish(),
        None => Walk::from_anchor(0, [0; 32], pinned)?.finish(),
    }
}

/// Every record of the export at `path`, in order, with its line number, unchecked: what
/// [`verify_export`] walks and `reverify` re-appraises. A line that is not one [`Line::of`]
/// writes is an error naming it.
pub(crate) fn read_export(
    path: &Path,
    mut each: impl FnMut(usize, Stored) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    let io = |e: std::io::Error| ArchiveError::Db {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let mut reader = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut buf = Vec::new();
    for number in 1.. {
        buf.clear();
        let n = Read::take(&mut reader, MAX_LINE + 1)
            .read_until(b'\n', &mut buf)
            .map_err(io)?;
        if n == 0 {
            break;
        }
        let bad = |detail: String| ArchiveError::Chain(format!("export line {number}: {detail}"));
        if n as u64 > MAX_LINE {
            return Err(bad(format!("longer than {} MiB", MAX_LINE >> 20)));
        }
        let line: Line = serde_json::from_slice(&buf).map_err(|e| bad(e.to_string()))?;
        each(number, line.into_stored().map_err(bad)?)?;
    }
    Ok(())
}

/// Whether `path` is an archive (an SQLite file, which starts with SQLite's magic string)
/// rather than an export.
pub(crate) fn is_archive(path: &Path) -> Result<bool, ArchiveError> {
    const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .and_then(|f| f.take(16).read_to_end(&mut head))
        .map_err(|e| ArchiveError::Db {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    Ok(head == SQLITE_MAGIC)
}

/// [`crate::verify`] when `path` is an archive, else [`verify_export`].
pub fn verify_archive_or_export(
    path: &Path,
    pinned: Option<[u8; 32]>,
) -> Result<Verified, ArchiveError> {
    if is_archive(path)? {
        crate::verify(path, pinned)
    } else {
        verify_export(path, pinned)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::archive::tests::record;
    use crate::archive::{Archive, NewRecord, verify};

    fn exported(records: &[NewRecord]) -> (tempfile::TempDir, std::path::PathBuf, Verified) {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("a.db");
        let mut a = Archive::open(&db).unwrap();
        for r in records {
            a.append(r).unwrap();
        }
        let mut out = Vec::new();
        let v = export(&db, &mut out).unwrap();
        assert_eq!(v, verify(&db, None).unwrap());
        assert_eq!(verify_archive_or_export(&db, Some(v.head)).unwrap(), v);
        let file = tmp.path().join("records.jsonl");
        std::fs::write(&file, out).unwrap();
        assert_eq!(verify_archive_or_export(&file, Some(v.head)).unwrap(), v);
        (tmp, file, v)
    }

    /// Rewrite line `line` through [`Line`], so every field not edited keeps its bytes.
    fn edit(file: &Path, line: usize, f: impl FnOnce(&mut Line)) {
        let text = std::fs::read_to_string(file).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let mut l: Line = serde_json::from_str(&lines[line]).unwrap();
        f(&mut l);
        lines[line] = serde_json::to_string(&l).unwrap();
        std::fs::write(file, lines.join("\n") + "\n").unwrap();
    }

    fn raw(text: &str) -> Option<Box<RawValue>> {
        Some(RawValue::from_string(text.into()).unwrap())
    }

    #[test]
    fn an_export_verifies_alone_with_the_archives_head_and_keeps_every_byte() {
        let mut odd = record(3);
        // Blobs that are not one-line JSON objects still round-trip, in their base64 fields.
        odd.evidence = Some(b"{\n  \"pretty\": true\n}".to_vec());
        odd.challenge = Some(vec![0xff, 0, 1]);
        odd.policy = vec![0xc3, 0x28];
        odd.report = "not json".into();
        odd.certificate = None;
        odd.failed_check = Some("connection".into());
        let records = [record(0), record(1), record(2), odd];
        let (_t, file, v) = exported(&records);
        assert_eq!(verify_export(&file, Some(v.head)).unwrap(), v);
        let text = std::fs::read_to_string(&file).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        // Inlined as the JSON it is, so `jq .evidence.quote` works, and byte for byte.
        assert_eq!(first["evidence"]["quote"], "x");
        assert!(text.contains(r#""evidence":{"quote":"x", "b":1.50,"a":[]}"#));
        assert_eq!(first["report"]["verdict"], "accepted");
        assert_eq!(first["prev_hash"], hex::encode([0; 32]));
        let last: serde_json::Value = serde_json::from_str(text.lines().nth(3).unwrap()).unwrap();
        assert!(last["evidence"].is_null() && last["evidence_base64"].is_string());
        assert_eq!(last["report_text"], "not json");
    }

    #[test]
    fn every_field_of_an_export_is_covered() {
        let records: Vec<_> = (0..4).map(record).collect();
        let (_t, file, v) = exported(&records);
        let pristine = std::fs::read(&file).unwrap();
        // Rewriting a line field by field keeps it intact; changing any one field does not.
        edit(&file, 2, |_| {});
        assert_eq!(verify_export(&file, Some(v.head)).unwrap(), v);
        type Edit = Box<dyn Fn(&mut Line)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("target", Box::new(|l| l.target = "b".into())),
            ("url", Box::new(|l| l.url = "https://x".into())),
            ("at", Box::new(|l| l.at = "2027-01-15T08:01:00Z".into())),
            ("verdict", Box::new(|l| l.verdict = "rejected".into())),
            (
                "failed_check",
                Box::new(|l| l.failed_check = Some("MRTD".into())),
            ),
            (
                "certificate",
                Box::new(|l| l.certificate = Some("Y2VyVA==".into())),
            ),
            ("no certificate", Box::new(|l| l.certificate = None)),
            (
                "evidence",
                Box::new(|l| l.evidence = raw(r#"{"quote":"y", "b":1.50,"a":[]}"#)),
            ),
            (
                "evidence re-encoded",
                Box::new(|l| l.evidence = raw(r#"{"a":[],"b":1.5,"quote":"x"}"#)),
            ),
            ("challenge", Box::new(|l| l.challenge = raw(r#"{"n":9}"#))),
            ("nonce", Box::new(|l| l.nonce = Some(hex::encode([9; 32])))),
            ("policy", Box::new(|l| l.policy = Some(String::new()))),
            (
                "report",
                Box::new(|l| l.report = raw(r#"{"verdict":"rejected","checks":[]}"#)),
            ),
            ("version", Box::new(|l| l.verifier_version = "9".into())),
        ];
        for (what, f) in edits {
            std::fs::write(&file, &pristine).unwrap();
            edit(&file, 2, f);
            let e = verify_export(&file, None).unwrap_err().to_string();
            assert!(
                e.contains("record #3") && e.contains("altered"),
                "{what}: {e}"
            );
        }
        // An unknown field could say anything unchecked.
        std::fs::write(&file, &pristine).unwrap();
        let text = String::from_utf8(pristine.clone()).unwrap();
        let second = text.lines().nth(1).unwrap();
        let noted = format!("{},\"note\":\"trust me\"}}", &second[..second.len() - 1]);
        std::fs::write(&file, text.replacen(second, &noted, 1)).unwrap();
        let e = verify_export(&file, None).unwrap_err().to_string();
        assert!(e.contains("export line 2") && e.contains("note"), "{e}");
        // Deleted lines: inside, a gap; at the end, only the pinned head finds it; at the
        // start, it reads as a prune, which a head pinned there refuses.
        let lines: Vec<&[u8]> = pristine.split_inclusive(|b| *b == b'\n').collect();
        let keep = |idx: &[usize]| {
            idx.iter()
                .flat_map(|i| lines[*i].to_vec())
                .collect::<Vec<_>>()
        };
        std::fs::write(&file, keep(&[0, 2, 3])).unwrap();
        let e = verify_export(&file, None).unwrap_err().to_string();
        assert!(e.contains("records #2..#2 are missing"), "{e}");
        std::fs::write(&file, keep(&[0, 1, 2])).unwrap();
        assert_eq!(verify_export(&file, None).unwrap().records, 3);
        let e = verify_export(&file, Some(v.head)).unwrap_err().to_string();
        assert!(e.contains("pinned head"), "{e}");
        std::fs::write(&file, keep(&[2, 3])).unwrap();
        assert_eq!(verify_export(&file, Some(v.head)).unwrap().anchor_seq, 2);
        let second: serde_json::Value = serde_json::from_slice(lines[1]).unwrap();
        let pinned = tdx_core::encoding::hex_array::<32>(second["hash"].as_str().unwrap()).unwrap();
        let e = verify_export(&file, Some(pinned)).unwrap_err().to_string();
        assert!(e.contains("is the archive's anchor"), "{e}");
        // A first record claiming to start the chain must start from zero.
        std::fs::write(&file, &pristine).unwrap();
        edit(&file, 0, |l| l.prev_hash = hex::encode([1; 32]));
        let e = verify_export(&file, None).unwrap_err().to_string();
        assert!(e.contains("prev_hash differs"), "{e}");
        std::fs::write(&file, &pristine).unwrap();
        edit(&file, 0, |l| l.seq = i64::MIN);
        let e = verify_export(&file, None).unwrap_err().to_string();
        assert!(
            e.contains("export line 1") && e.contains("start at 1"),
            "{e}"
        );
    }

    #[test]
    fn an_archive_that_is_not_intact_is_not_exported_past_the_break() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("a.db");
        let mut a = Archive::open(&db).unwrap();
        for i in 0..3 {
            a.append(&record(i)).unwrap();
        }
        drop(a);
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute(
                "UPDATE appraisals SET verdict = 'rejected' WHERE seq = 2",
                [],
            )
            .unwrap();
        let mut out = Vec::new();
        let e = export(&db, &mut out).unwrap_err().to_string();
        assert!(e.contains("record #2") && e.contains("altered"), "{e}");
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
    }

    /// Bytes flipped, inserted or cut anywhere in an export (512 damaged copies from a fixed
    /// seed): never a panic, and whatever verifies ends at one of the genuine chain's heads (a
    /// shorter chain at most, which only a pinned head tells apart).
    #[test]
    fn a_damaged_export_never_verifies_as_another_chain() {
        let (tmp, file, _) = exported(&(0..3).map(record).collect::<Vec<_>>());
        let pristine = std::fs::read(&file).unwrap();
        let heads: Vec<[u8; 32]> = String::from_utf8(pristine.clone())
            .unwrap()
            .lines()
            .map(|l| {
                let l: Line = serde_json::from_str(l).unwrap();
                tdx_core::encoding::hex_array::<32>(&l.hash).unwrap()
            })
            .collect();
        // xorshift64: reproducible without a dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        let damaged = tmp.path().join("damaged.jsonl");
        let mut verified = 0;
        for _ in 0..512 {
            let mut bytes = pristine.clone();
            for _ in 0..1 + next(3) {
                let at = next(bytes.len() + 1);
                match next(3) {
                    0 if at < bytes.len() => bytes[at] ^= 1 + next(255) as u8,
                    1 => bytes.insert(at, next(256) as u8),
                    _ => bytes.truncate(at),
                }
            }
            std::fs::write(&damaged, &bytes).unwrap();
            if let Ok(v) = verify_export(&damaged, None) {
                verified += 1;
                assert!(
                    v.records == 0 || heads.contains(&v.head),
                    "verified as a chain ending at {}",
                    hex::encode(v.head)
                );
            }
        }
        // Cuts at line ends do verify (shorter chains); most damage does not.
        assert!(verified < 256, "{verified} of 512 damaged copies verified");
    }

    #[test]
    fn hostile_lines_are_errors_naming_the_line() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("x.jsonl");
        for (text, needle) in [
            (&b"{\"seq\": 1}\n"[..], "export line 1"),
            (b"not json\n", "export line 1"),
            (b"\xff\xfe\n", "export line 1"),
            (b"", ""),
        ] {
            std::fs::write(&file, text).unwrap();
            match verify_export(&file, None) {
                Ok(v) => assert!(text.is_empty() && v.records == 0),
                Err(e) => assert!(e.to_string().contains(needle), "{e}"),
            }
        }
        let e = verify_export(&tmp.path().join("absent"), None).unwrap_err();
        assert!(matches!(e, ArchiveError::Db { .. }), "{e}");
    }
}
