//! The evidence archive (docs/watch.md, docs/formats.md §14): one SQLite file holding every
//! appraisal with what an auditor needs to re-check it without trusting the watcher. Records
//! are hash-chained: each commits to the one before, so an edit or a deletion inside the
//! chain is found by [`verify`], and a deleted tail against a pinned head. Certificates,
//! evidence documents and policies are stored once, by SHA-256, and referenced.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

pub use super::chain::Verified;
use super::chain::{BlobDigests, Stored, Walk, record_hash, sha256};

pub const ARCHIVE_FORMAT: &str = "tdx-agent/evidence-archive/v1";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (sha256 BLOB PRIMARY KEY NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS appraisals (
  seq INTEGER PRIMARY KEY NOT NULL,
  target TEXT NOT NULL,
  url TEXT NOT NULL,
  at INTEGER NOT NULL,
  verdict TEXT NOT NULL,
  failed_check TEXT,
  certificate BLOB,
  evidence BLOB,
  challenge BLOB,
  nonce BLOB,
  policy BLOB NOT NULL,
  report TEXT NOT NULL,
  verifier_version TEXT NOT NULL,
  prev_hash BLOB NOT NULL,
  hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS appraisals_target_at ON appraisals (target, at);
";

/// One appraisal as the watcher records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    pub target: String,
    pub url: String,
    /// Unix seconds of the appraisal (its verification time).
    pub at: i64,
    /// `accepted`, `rejected`, or `error` (nothing to appraise: unreachable, timed out).
    pub verdict: String,
    pub failed_check: Option<String>,
    /// The certificate the server presented (DER).
    pub certificate: Option<Vec<u8>>,
    /// The evidence document it served (JSON: quote, collateral, event log, GPU evidence).
    pub evidence: Option<Vec<u8>>,
    /// The challenge answer (JSON) and the nonce it answered.
    pub challenge: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
    /// The policy file's text the appraisal applied.
    pub policy: Vec<u8>,
    /// The report (JSON on one line, the shape `attest --json` prints), or the error.
    pub report: String,
    pub verifier_version: String,
}

/// A target's last record in the archive ([`Archive::last_of`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastOf {
    /// The verdict of its last record (none: never appraised, or pruned away).
    pub verdict: Option<String>,
    /// When it last passed.
    pub accepted_at: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {path}: {detail}")]
    Db { path: String, detail: String },
    #[error("archive record #{seq} ({target} at {at}): {detail}")]
    Record {
        seq: i64,
        target: String,
        at: String,
        detail: String,
    },
    #[error("archive: {0}")]
    Chain(String),
    /// The export's output could not be written (an I/O error, not a finding).
    #[error("writing the export: {0}")]
    Write(String),
}

fn db(path: &Path) -> impl Fn(rusqlite::Error) -> ArchiveError + '_ {
    move |e| ArchiveError::Db {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

pub struct Archive {
    conn: Connection,
    path: std::path::PathBuf,
    id: String,
}

impl Archive {
    /// Open (or create) the archive at `path`. Every append is one transaction, synced.
    pub fn open(path: &Path) -> Result<Self, ArchiveError> {
        let conn = Connection::open(path).map_err(db(path))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )
        .map_err(db(path))?;
        conn.execute_batch(SCHEMA).map_err(db(path))?;
        let format: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db(path))?;
        match format.as_deref() {
            None => {
                conn.execute_batch(&format!(
                    "INSERT INTO meta (key, value) VALUES ('format', '{ARCHIVE_FORMAT}'),
                     ('anchor_seq', '0'), ('anchor_hash', '{}');",
                    hex::encode([0u8; 32])
                ))
                .map_err(db(path))?;
            }
            Some(ARCHIVE_FORMAT) => {}
            Some(other) => {
                return Err(ArchiveError::Db {
                    path: path.display().to_string(),
                    detail: format!("format {other:?}, this build reads {ARCHIVE_FORMAT:?}"),
                });
            }
        }
        // Which archive a record number belongs to (webhook receivers key the last number they
        // acted on by it: a replaced file starts again at 1). Archives made before it get one.
        let mut fresh_id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut fresh_id);
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('archive_id', ?1)",
            params![hex::encode(fresh_id)],
        )
        .map_err(db(path))?;
        let id = conn
            .query_row("SELECT value FROM meta WHERE key = 'archive_id'", [], |r| {
                r.get(0)
            })
            .map_err(db(path))?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            id,
        })
    }

    /// A random id given to the archive when it was created (32 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Cap the database at about `bytes` (SQLite's `max_page_count` in its page size): at the
    /// cap an append fails as on a full disk, and nothing committed is lost.
    pub fn set_max_bytes(&self, bytes: u64) -> Result<(), ArchiveError> {
        let page: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(db(&self.path))?;
        let pages = i64::try_from(bytes).unwrap_or(i64::MAX) / page.max(512);
        self.set_max_page_count(pages.max(1))
    }

    /// Limit the database to `pages` pages (SQLite's `max_page_count`): how tests make the
    /// disk full.
    pub fn set_max_page_count(&self, pages: i64) -> Result<(), ArchiveError> {
        self.conn
            .pragma_update(None, "max_page_count", pages)
            .map_err(db(&self.path))
    }

    /// Append `r`; returns its sequence number and hash (the new head). All or nothing.
    pub fn append(&mut self, r: &NewRecord) -> Result<(i64, [u8; 32]), ArchiveError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(db(&path))?;
        let blobs = BlobDigests::of(r);
        for (key, data) in [
            (blobs.certificate, r.certificate.as_deref()),
            (blobs.evidence, r.evidence.as_deref()),
            (Some(blobs.policy), Some(r.policy.as_slice())),
        ] {
            if let (Some(key), Some(data)) = (key, data) {
                tx.execute(
                    "INSERT OR IGNORE INTO blobs (sha256, data) VALUES (?1, ?2)",
                    params![key.as_slice(), data],
                )
                .map_err(db(&path))?;
            }
        }
        let (prev_seq, prev_hash) = last(&tx, &path)?;
        let seq = prev_seq.checked_add(1).ok_or_else(|| {
            ArchiveError::Chain(format!(
                "the last record's seq {prev_seq} cannot be followed"
            ))
        })?;
        let hash = record_hash(&prev_hash, seq, r, &blobs);
        tx.execute(
            "INSERT INTO appraisals (seq, target, url, at, verdict, failed_check, certificate,
             evidence, challenge, nonce, policy, report, verifier_version, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                seq,
                r.target,
                r.url,
                r.at,
                r.verdict,
                r.failed_check,
                blobs.certificate.map(|k| k.to_vec()),
                blobs.evidence.map(|k| k.to_vec()),
                r.challenge,
                r.nonce,
                blobs.policy.to_vec(),
                r.report,
                r.verifier_version,
                prev_hash.to_vec(),
                hash.to_vec(),
            ],
        )
        .map_err(db(&path))?;
        tx.commit().map_err(db(&path))?;
        Ok((seq, hash))
    }

    /// The last record's sequence number and hash (the head to pin), or the anchor.
    pub fn head(&self) -> Result<(i64, [u8; 32]), ArchiveError> {
        last(&self.conn, &self.path)
    }

    /// What the archive last recorded of `target`: where a target (re)started takes up its
    /// state, so a change across a restart is still acted on and its time since the last pass
    /// does not start again.
    pub fn last_of(&self, target: &str) -> Result<LastOf, ArchiveError> {
        // By seq, not `at`: the chain's order is the truth; MAX(seq) reads the target's
        // entries of the (target, at) index, which carry the seq.
        let verdict: Option<String> = self
            .conn
            .query_row(
                "SELECT verdict FROM appraisals
                 WHERE seq = (SELECT MAX(seq) FROM appraisals WHERE target = ?1)",
                params![target],
                |r| r.get(0),
            )
            .optional()
            .map_err(db(&self.path))?;
        let accepted_at: Option<i64> = self
            .conn
            .query_row(
                "SELECT at FROM appraisals WHERE target = ?1 AND verdict = 'accepted'
                 ORDER BY at DESC LIMIT 1",
                params![target],
                |r| r.get(0),
            )
            .optional()
            .map_err(db(&self.path))?;
        Ok(LastOf {
            verdict,
            accepted_at,
        })
    }

    /// Delete whole records older than `before` (unix seconds) and the blobs only they used;
    /// the last deleted record's hash becomes the chain's anchor. Returns how many went.
    pub fn prune(&mut self, before: i64) -> Result<usize, ArchiveError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(db(&path))?;
        // Only a prefix of the chain can go: the records before the first one to keep.
        let first_kept: Option<i64> = tx
            .query_row(
                "SELECT MIN(seq) FROM appraisals WHERE at >= ?1",
                params![before],
                |r| r.get(0),
            )
            .map_err(db(&path))?;
        let cut: Option<(i64, Vec<u8>)> = tx
            .query_row(
                "SELECT seq, hash FROM appraisals WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
                params![first_kept.unwrap_or(i64::MAX)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db(&path))?;
        let Some((seq, hash)) = cut else {
            return Ok(0);
        };
        let n = tx
            .execute("DELETE FROM appraisals WHERE seq <= ?1", params![seq])
            .map_err(db(&path))?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'anchor_seq'",
            params![seq.to_string()],
        )
        .map_err(db(&path))?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'anchor_hash'",
            params![hex::encode(&hash)],
        )
        .map_err(db(&path))?;
        tx.execute(
            "DELETE FROM blobs WHERE sha256 NOT IN (SELECT certificate FROM appraisals WHERE certificate IS NOT NULL
             UNION SELECT evidence FROM appraisals WHERE evidence IS NOT NULL
             UNION SELECT policy FROM appraisals)",
            [],
        )
        .map_err(db(&path))?;
        tx.commit().map_err(db(&path))?;
        tracing::info!(pruned = n, anchor_seq = seq, anchor = %hex::encode(&hash), "archive pruned; the chain's anchor moved");
        Ok(n)
    }
}

fn anchor(conn: &Connection, path: &Path) -> Result<(i64, [u8; 32]), ArchiveError> {
    let get = |key: &str| -> Result<String, ArchiveError> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .map_err(db(path))
    };
    let seq = get("anchor_seq")?
        .parse::<i64>()
        .map_err(|e| ArchiveError::Chain(format!("meta anchor_seq: {e}")))?;
    let hash = tdx_core::encoding::hex_array::<32>(&get("anchor_hash")?)
        .map_err(|e| ArchiveError::Chain(format!("meta anchor_hash: {e}")))?;
    Ok((seq, hash))
}

fn last(conn: &Connection, path: &Path) -> Result<(i64, [u8; 32]), ArchiveError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM appraisals ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db(path))?;
    match row {
        None => anchor(conn, path),
        Some((seq, hash)) => Ok((
            seq,
            hash.try_into()
                .map_err(|_| ArchiveError::Chain(format!("record #{seq}: hash is not 32 bytes")))?,
        )),
    }
}

/// Walk the chain from its anchor (see [`Walk`]), also checking every blob a record names is
/// there and hashes to its name; with `pinned`, that head must be in the chain.
pub fn verify(path: &Path, pinned: Option<[u8; 32]>) -> Result<Verified, ArchiveError> {
    walk(path, pinned, |_| Ok(()))
}

/// [`verify`], handing each intact record, oldest first, to `each` before the next is read.
/// The anchor and the records are read in one transaction: a prune committing between the
/// two would otherwise read as records deleted from a live archive.
pub(crate) fn walk(
    path: &Path,
    pinned: Option<[u8; 32]>,
    mut each: impl FnMut(&Stored) -> Result<(), ArchiveError>,
) -> Result<Verified, ArchiveError> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db(path))?;
    let conn = conn.unchecked_transaction().map_err(db(path))?;
    let (anchor_seq, anchor_hash) = anchor(&conn, path)?;
    let mut walk = Walk::from_anchor(anchor_seq, anchor_hash, pinned)?;
    let mut stmt = conn
        .prepare(
            "SELECT seq, target, url, at, verdict, failed_check, certificate, evidence, challenge,
             nonce, policy, report, verifier_version, prev_hash, hash FROM appraisals ORDER BY seq",
        )
        .map_err(db(path))?;
    let mut rows = stmt.query([]).map_err(db(path))?;
    while let Some(row) = rows.next().map_err(db(path))? {
        let e = db(path);
        let mut r = Stored {
            seq: row.get(0).map_err(&e)?,
            record: NewRecord {
                target: row.get(1).map_err(&e)?,
                url: row.get(2).map_err(&e)?,
                at: row.get(3).map_err(&e)?,
                verdict: row.get(4).map_err(&e)?,
                failed_check: row.get(5).map_err(&e)?,
                certificate: None,
                evidence: None,
                challenge: row.get(8).map_err(&e)?,
                nonce: row.get(9).map_err(&e)?,
                policy: Vec::new(),
                report: row.get(11).map_err(&e)?,
                verifier_version: row.get(12).map_err(&e)?,
            },
            prev_hash: row.get(13).map_err(&e)?,
            hash: row.get(14).map_err(&e)?,
        };
        // A blob's bytes and their SHA-256, which must be the name the record gives it.
        type Blob = Option<([u8; 32], Vec<u8>)>;
        let blob = |what: &str, key: Option<Vec<u8>>| -> Result<Blob, ArchiveError> {
            let Some(key) = key else { return Ok(None) };
            let data: Option<Vec<u8>> = conn
                .query_row(
                    "SELECT data FROM blobs WHERE sha256 = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db(path))?;
            let Some(d) = data else {
                return Err(r.error(format!("its {what} is missing from the blobs")));
            };
            let digest = sha256(&d);
            if digest.as_slice() != key.as_slice() {
                return Err(r.error(format!(
                    "its {what} was altered (SHA-256 no longer matches)"
                )));
            }
            Ok(Some((digest, d)))
        };
        let certificate = blob("certificate", row.get(6).map_err(&e)?)?;
        let evidence = blob("evidence", row.get(7).map_err(&e)?)?;
        let (policy_digest, policy) = blob("policy", row.get(10).map_err(&e)?)?
            .ok_or_else(|| r.error("its policy is missing (NULL)".into()))?;
        let blobs = BlobDigests {
            certificate: certificate.as_ref().map(|(d, _)| *d),
            evidence: evidence.as_ref().map(|(d, _)| *d),
            policy: policy_digest,
        };
        (r.record.certificate, r.record.evidence, r.record.policy) = (
            certificate.map(|(_, b)| b),
            evidence.map(|(_, b)| b),
            policy,
        );
        walk.step(&r, &blobs)?;
        each(&r)?;
    }
    walk.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn record(i: i64) -> NewRecord {
        NewRecord {
            target: "a".into(),
            url: "https://127.0.0.1:1".into(),
            at: 1_800_000_000 + i * 60,
            verdict: "accepted".into(),
            failed_check: None,
            certificate: Some(b"cert".to_vec()),
            evidence: Some(br#"{"quote":"x", "b":1.50,"a":[]}"#.to_vec()),
            challenge: Some(format!(r#"{{"n":{i}}}"#).into_bytes()),
            nonce: Some(vec![i as u8; 32]),
            policy: b"[measurements]\n".to_vec(),
            report: r#"{"verdict":"accepted","checks":[]}"#.into(),
            verifier_version: "0.1.0".into(),
        }
    }

    fn filled(n: i64) -> (tempfile::TempDir, std::path::PathBuf, Vec<[u8; 32]>) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.db");
        let mut a = Archive::open(&path).unwrap();
        let heads = (0..n).map(|i| a.append(&record(i)).unwrap().1).collect();
        (tmp, path, heads)
    }

    #[test]
    fn an_untouched_chain_verifies_and_blobs_are_stored_once() {
        let (_t, path, heads) = filled(5);
        let v = verify(&path, Some(heads[2])).unwrap();
        assert_eq!((v.records, v.head), (5, heads[4]));
        let conn = Connection::open(&path).unwrap();
        let blobs: i64 = conn
            .query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(blobs, 3, "certificate, evidence and policy once each");
    }

    #[test]
    fn edits_and_deletions_are_found_and_named() {
        for (sql, needle) in [
            (
                "UPDATE appraisals SET verdict = 'accepted', failed_check = NULL, report = '{\"x\":1}' WHERE seq = 3",
                "record #3",
            ),
            (
                "DELETE FROM appraisals WHERE seq = 2",
                "records #2..#2 are missing",
            ),
            (
                "UPDATE blobs SET data = X'00' WHERE data = CAST('cert' AS BLOB)",
                "certificate was altered",
            ),
        ] {
            let (_t, path, _) = filled(5);
            Connection::open(&path).unwrap().execute(sql, []).unwrap();
            let e = verify(&path, None).unwrap_err().to_string();
            assert!(e.contains(needle), "{sql}: {e}");
        }
        // A deleted tail is only seen against a pinned head.
        let (_t, path, heads) = filled(5);
        Connection::open(&path)
            .unwrap()
            .execute("DELETE FROM appraisals WHERE seq >= 4", [])
            .unwrap();
        assert!(verify(&path, None).is_ok());
        let e = verify(&path, Some(heads[4])).unwrap_err().to_string();
        assert!(e.contains("pinned head"), "{e}");
    }

    #[test]
    fn last_of_gives_a_targets_last_verdict_and_last_pass() {
        let (_t, path, _) = filled(3);
        let mut a = Archive::open(&path).unwrap();
        let mut failed = record(3);
        failed.verdict = "rejected".into();
        a.append(&failed).unwrap();
        let mut other = record(4);
        other.target = "b".into();
        a.append(&other).unwrap();
        assert_eq!(
            a.last_of("a").unwrap(),
            LastOf {
                verdict: Some("rejected".into()),
                accepted_at: Some(record(2).at),
            }
        );
        assert_eq!(a.last_of("b").unwrap().verdict.as_deref(), Some("accepted"));
        assert_eq!(a.last_of("c").unwrap(), LastOf::default());
    }

    #[test]
    fn an_archive_keeps_the_random_id_it_was_created_with() {
        let (_t, path, _) = filled(1);
        let id = Archive::open(&path).unwrap().id().to_string();
        assert_eq!(id.len(), 32, "{id}");
        assert_eq!(Archive::open(&path).unwrap().id(), id);
        let (_u, other, _) = filled(1);
        assert_ne!(Archive::open(&other).unwrap().id(), id);
    }

    #[test]
    fn pruning_moves_the_anchor_and_the_rest_still_verifies() {
        let (_t, path, heads) = filled(6);
        let mut a = Archive::open(&path).unwrap();
        // Records 1..=3 are older than the cut.
        assert_eq!(a.prune(1_800_000_000 + 3 * 60).unwrap(), 3);
        let v = verify(&path, Some(heads[5])).unwrap();
        assert_eq!((v.records, v.anchor_seq), (3, 3));
        // Appending continues the chain.
        let (seq, _) = a.append(&record(9)).unwrap();
        assert_eq!(seq, 7);
        verify(&path, None).unwrap();
    }

    #[test]
    fn a_pinned_head_cannot_be_satisfied_by_moving_the_anchor_onto_it() {
        // Someone with write access deletes records 1..=3 and sets the anchor to the head an
        // auditor pinned at record 3: the chain from the anchor still verifies, the pin not.
        let (_t, path, heads) = filled(5);
        let conn = Connection::open(&path).unwrap();
        conn.execute("DELETE FROM appraisals WHERE seq <= 3", [])
            .unwrap();
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'anchor_seq'", [])
            .unwrap();
        conn.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'anchor_hash'",
            params![hex::encode(heads[2])],
        )
        .unwrap();
        assert!(verify(&path, None).is_ok(), "a prune looks the same");
        let e = verify(&path, Some(heads[2])).unwrap_err().to_string();
        assert!(e.contains("is the archive's anchor"), "{e}");
        // Nor by starting a "new" chain from the pinned head at seq 0, as if nothing was pruned.
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'anchor_seq'", [])
            .unwrap();
        let e = verify(&path, Some(heads[2])).unwrap_err().to_string();
        assert!(e.contains("not one a prune leaves"), "{e}");
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'anchor_seq'", [])
            .unwrap();
        // A head pinned before the anchor is not vouched for either, and says it may be pruned.
        let e = verify(&path, Some(heads[0])).unwrap_err().to_string();
        assert!(e.contains("pruned"), "{e}");
        // Heads after the anchor still verify.
        assert!(verify(&path, Some(heads[4])).is_ok());
    }

    #[test]
    fn a_full_disk_loses_no_committed_record() {
        let (_t, path, _) = filled(2);
        let mut a = Archive::open(&path).unwrap();
        let pages: i64 = a
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        a.set_max_page_count(pages).unwrap();
        let mut big = record(2);
        big.evidence = Some(vec![b'x'; 1 << 20]);
        assert!(a.append(&big).is_err());
        let v = verify(&path, None).unwrap();
        assert_eq!(v.records, 2);
    }
}
