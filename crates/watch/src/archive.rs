//! The evidence archive (docs/watch.md, docs/formats.md §14): one SQLite file holding every
//! appraisal with what an auditor needs to re-check it without trusting the watcher. Records
//! are hash-chained: each commits to the one before, so an edit or a deletion inside the
//! chain is found by [`verify`], and a deleted tail against a pinned head. Certificates,
//! evidence documents and policies are stored once, by SHA-256, and referenced.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
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

/// Every text is shown through [`printable`]: records, blob names and SQLite's own messages
/// come from a file whoever altered it wrote, and reach an auditor's terminal.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The file could not be read or written (I/O, not a finding).
    #[error("archive {}: {}", printable(.path), printable(.detail))]
    Db { path: String, detail: String },
    #[error("archive record #{seq} ({} at {}): {}", printable(.target), printable(.at), printable(.detail))]
    Record {
        seq: i64,
        target: String,
        at: String,
        detail: String,
    },
    #[error("archive: {}", printable(.0))]
    Chain(String),
    /// The file is not laid out as an archive is (a view or a trigger, a table that is not
    /// ours): altered, and refused before anything in it runs.
    #[error("archive {}: not an intact archive: {}", printable(.path), printable(.detail))]
    Schema { path: String, detail: String },
    /// Another process (a second `watch`) has the archive open for appending.
    #[error(
        "another watch holds {} (its lock {} is taken): one watch appends to an archive; stop \
         the other, or give this one its own archive",
        printable(.path),
        printable(.lock)
    )]
    Locked { path: String, lock: String },
    /// The export's output could not be written (an I/O error, not a finding).
    #[error("writing the export: {}", printable(.0))]
    Write(String),
}

/// `s` safe to print on a terminal: control characters (ANSI escapes among them) and the
/// invisible characters that reorder or hide text are written as `\u{..}` escapes, so text
/// from an altered archive cannot redraw the screen or disguise what an error says.
pub fn printable(s: &str) -> Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}')
    };
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if hidden(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn db(path: &Path) -> impl Fn(rusqlite::Error) -> ArchiveError + '_ {
    move |e| ArchiveError::Db {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

fn not_intact(path: &Path, detail: String) -> ArchiveError {
    ArchiveError::Schema {
        path: path.display().to_string(),
        detail,
    }
}

/// Whether `e` says a value is not of the type its column holds (as only an edit makes it),
/// rather than that the file could not be read.
fn is_type_error(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..)
    )
}

/// Column `idx` of a record's row; a value not of the column's type is the record altered
/// (`bad` names it), not an I/O error.
pub(crate) fn column<T: rusqlite::types::FromSql>(
    row: &rusqlite::Row<'_>,
    idx: usize,
    name: &str,
    bad: &dyn Fn(String) -> ArchiveError,
) -> Result<T, ArchiveError> {
    row.get(idx).map_err(|e| {
        bad(format!(
            "its {name} was altered: it is not what the archive stores there ({e})"
        ))
    })
}

/// The connection settings every archive is opened with, before any statement reads it:
/// SQL stored in the file (views, triggers, defaults) is not trusted to call functions with
/// side effects, views and triggers do not run at all, and the file's own structures cannot
/// be written through SQL ([`check_schema`] then refuses a file that has them).
fn harden(conn: &Connection, path: &Path) -> Result<(), ArchiveError> {
    for (config, on) in [
        (DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
        (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
    ] {
        let now = conn.set_db_config(config, on).map_err(db(path))?;
        if now != on {
            return Err(ArchiveError::Db {
                path: path.display().to_string(),
                detail: format!("SQLite did not take {config:?} = {on}"),
            });
        }
    }
    Ok(())
}

/// The archive's tables, each as [`SCHEMA`] makes it: (column, declared type, NOT NULL,
/// position in the primary key, hidden) in order.
type Columns = Vec<(String, String, bool, i64, i64)>;

fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Columns> {
    conn.prepare(
        "SELECT name, type, \"notnull\", pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid",
    )?
    .query_map(params![table], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })?
    .collect()
}

const TABLES: [&str; 3] = ["meta", "blobs", "appraisals"];

/// Refuse a file whose layout is not the archive's: any view or trigger (code that runs when
/// the archive is read: a view named `appraisals` recursing forever, say), or `meta`, `blobs`
/// or `appraisals` that is not an ordinary table with [`SCHEMA`]'s columns. With
/// `fresh_ok`, a file with none of the three yet is allowed (the watcher is about to create
/// them); one with some but not all is not (re-creating `meta` would move the anchor).
fn check_schema(conn: &Connection, path: &Path, fresh_ok: bool) -> Result<(), ArchiveError> {
    let code: Option<(String, String)> = conn
        .query_row(
            "SELECT type, name FROM sqlite_schema WHERE type NOT IN ('table', 'index')
             ORDER BY rowid LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db(path))?;
    if let Some((kind, name)) = code {
        return Err(not_intact(
            path,
            format!(
                "it holds a {kind:?} named {name:?}; an archive holds only tables and indexes, \
                 and a view or trigger would run code as the archive is read"
            ),
        ));
    }
    // What SCHEMA makes, read back from a database made with it, so the two cannot drift.
    let made = Connection::open_in_memory()
        .and_then(|m| m.execute_batch(SCHEMA).map(|()| m))
        .map_err(db(path))?;
    let mut found = Vec::new();
    for table in TABLES {
        let sql: Option<Option<String>> = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = ?1 COLLATE NOCASE AND type = 'table'",
                params![table],
                |r| r.get(0),
            )
            .optional()
            .map_err(db(path))?;
        found.push((table, sql));
    }
    if fresh_ok && found.iter().all(|(_, sql)| sql.is_none()) {
        return Ok(());
    }
    for (table, sql) in found {
        let Some(sql) = sql else {
            return Err(not_intact(path, format!("it has no table {table:?}")));
        };
        if !sql
            .as_deref()
            .is_some_and(|s| s.starts_with("CREATE TABLE"))
        {
            return Err(not_intact(
                path,
                format!(
                    "{table:?} is not an ordinary table ({:?})",
                    sql.unwrap_or_default()
                ),
            ));
        }
        let want = columns(&made, table).map_err(db(path))?;
        let have = columns(conn, table).map_err(db(path))?;
        if have != want {
            let names = |c: &Columns| {
                c.iter()
                    .map(|(name, ty, ..)| format!("{name} {ty}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(not_intact(
                path,
                format!(
                    "table {table:?} has the columns ({}), not the archive's ({})",
                    names(&have),
                    names(&want)
                ),
            ));
        }
    }
    Ok(())
}

/// The archive at `path` opened for reading only ([`harden`]ed and its layout checked), as
/// auditors' commands read it. Takes no lock: a running watch may hold it.
pub(crate) fn open_for_reading(path: &Path) -> Result<Connection, ArchiveError> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db(path))?;
    harden(&conn, path)?;
    check_schema(&conn, path, false)?;
    Ok(conn)
}

/// `ARCHIVE.lock` beside the archive's real path (a second name for the same file, through a
/// symbolic link, finds the same lock).
fn lock_path(path: &Path) -> Result<PathBuf, ArchiveError> {
    let io = |e: std::io::Error| ArchiveError::Db {
        path: path.display().to_string(),
        detail: format!("finding where its lock goes: {e}"),
    };
    let real = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = path.file_name().ok_or_else(|| ArchiveError::Db {
                path: path.display().to_string(),
                detail: "names no file".into(),
            })?;
            std::fs::canonicalize(dir).map_err(io)?.join(name)
        }
        Err(e) => return Err(io(e)),
    };
    let mut name = real.clone().into_os_string();
    name.push(".lock");
    Ok(PathBuf::from(name))
}

/// Take the archive's lock, held as long as the file returned is open: two watchers
/// appending to one archive would interleave their records, prune under each other and both
/// send every webhook.
fn lock(path: &Path) -> Result<std::fs::File, ArchiveError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let lock = lock_path(path)?;
    // Only the owner may open it: anyone who can open the lock file can hold its lock.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock)
        .map_err(|e| ArchiveError::Db {
            path: path.display().to_string(),
            detail: format!("its lock {}: {e}", lock.display()),
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ArchiveError::Locked {
            path: path.display().to_string(),
            lock: lock.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(ArchiveError::Db {
            path: path.display().to_string(),
            detail: format!("locking {}: {e}", lock.display()),
        }),
    }
}

pub struct Archive {
    conn: Connection,
    path: PathBuf,
    id: String,
    /// `ARCHIVE.lock`, locked while this is open ([`lock`]); declared after `conn` so the
    /// database is closed before the lock is let go.
    _lock: std::fs::File,
}

impl Archive {
    /// Open (or create) the archive at `path` for appending, taking its lock (refused while
    /// another process holds it). Every append is one transaction, synced.
    pub fn open(path: &Path) -> Result<Self, ArchiveError> {
        let lock = lock(path)?;
        let conn = Connection::open(path).map_err(db(path))?;
        harden(&conn, path)?;
        check_schema(&conn, path, true)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )
        .map_err(db(path))?;
        conn.execute_batch(SCHEMA).map_err(db(path))?;
        check_schema(&conn, path, false)?;
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
            _lock: lock,
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
        .map_err(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => {
                ArchiveError::Chain(format!("meta {key} is missing: the chain has no anchor"))
            }
            e if is_type_error(&e) => ArchiveError::Chain(format!("meta {key} was altered: {e}")),
            e => db(path)(e),
        })
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
    let conn = open_for_reading(path)?;
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
    let mut last_seq = anchor_seq;
    while let Some(row) = rows.next().map_err(db(path))? {
        // A value not of its column's type was put there by an edit: the record is not
        // intact, and is named (its seq is an INTEGER PRIMARY KEY, which holds integers only).
        let seq: i64 = row.get(0).map_err(|e| {
            ArchiveError::Chain(format!(
                "the record after #{last_seq} was altered: its seq is not an integer ({e})"
            ))
        })?;
        last_seq = seq;
        let (target, at) = (row.get::<_, String>(1), row.get::<_, i64>(3));
        let bad = |detail: String| record_error(seq, &target, &at, detail);
        let mut r = Stored {
            seq,
            record: NewRecord {
                target: column(row, 1, "target", &bad)?,
                url: column(row, 2, "url", &bad)?,
                at: column(row, 3, "at", &bad)?,
                verdict: column(row, 4, "verdict", &bad)?,
                failed_check: column(row, 5, "failed_check", &bad)?,
                certificate: None,
                evidence: None,
                challenge: column(row, 8, "challenge", &bad)?,
                nonce: column(row, 9, "nonce", &bad)?,
                policy: Vec::new(),
                report: column(row, 11, "report", &bad)?,
                verifier_version: column(row, 12, "verifier_version", &bad)?,
            },
            prev_hash: column(row, 13, "prev_hash", &bad)?,
            hash: column(row, 14, "hash", &bad)?,
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
                .map_err(|e| {
                    if is_type_error(&e) {
                        r.error(format!(
                            "its {what} was altered: the blob is not bytes ({e})"
                        ))
                    } else {
                        db(path)(e)
                    }
                })?;
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
        let certificate = blob("certificate", column(row, 6, "certificate", &bad)?)?;
        let evidence = blob("evidence", column(row, 7, "evidence", &bad)?)?;
        let (policy_digest, policy) = blob("policy", column(row, 10, "policy", &bad)?)?
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

/// The error for record `seq` whose `detail` is wrong, naming it by its target and time as
/// far as those could be read (an edit may have put a value of another type in them).
pub(crate) fn record_error(
    seq: i64,
    target: &rusqlite::Result<String>,
    at: &rusqlite::Result<i64>,
    detail: String,
) -> ArchiveError {
    ArchiveError::Record {
        seq,
        target: target
            .as_ref()
            .map_or_else(|_| "(target unreadable)".into(), Clone::clone),
        at: at.as_ref().map_or_else(
            |_| "(time unreadable)".into(),
            |t| tdx_core::verify::time::format_unix(*t),
        ),
        detail,
    }
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

    /// A view over `c`, a recursion that would run on for as long as it is read if it were
    /// read (bounded here, so a regression fails rather than hangs), with `columns`.
    fn recursing_view(name: &str, columns: &str) -> String {
        format!(
            "CREATE VIEW {name} AS WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c \
             WHERE n < 100000) SELECT {columns} FROM c;"
        )
    }

    #[test]
    fn a_file_not_laid_out_as_an_archive_is_refused_before_it_is_read() {
        let appraisals_view = format!(
            "DROP TABLE appraisals; {}",
            recursing_view(
                "appraisals",
                "n AS seq, 'a' AS target, 'u' AS url, 0 AS at, 'accepted' AS verdict, NULL AS \
                 failed_check, NULL AS certificate, NULL AS evidence, NULL AS challenge, NULL \
                 AS nonce, X'00' AS policy, '' AS report, '' AS verifier_version, X'' AS \
                 prev_hash, X'' AS hash"
            )
        );
        let meta_view = format!(
            "DROP TABLE meta; {}",
            recursing_view("meta", "'anchor_seq' AS key, n AS value")
        );
        for (sql, needle) in [
            (appraisals_view.as_str(), "\"view\" named \"appraisals\""),
            (meta_view.as_str(), "\"view\" named \"meta\""),
            (
                "CREATE TRIGGER t AFTER INSERT ON blobs BEGIN DELETE FROM blobs; END;",
                "\"trigger\" named \"t\"",
            ),
            (
                "ALTER TABLE appraisals ADD COLUMN x INTEGER GENERATED ALWAYS AS (1) VIRTUAL",
                "table \"appraisals\" has the columns",
            ),
            (
                "CREATE TABLE b2 (sha256 BLOB PRIMARY KEY NOT NULL, data TEXT NOT NULL);
                 INSERT INTO b2 SELECT * FROM blobs; DROP TABLE blobs;
                 ALTER TABLE b2 RENAME TO blobs;",
                "table \"blobs\" has the columns (sha256 BLOB, data TEXT)",
            ),
            ("DROP TABLE meta", "it has no table \"meta\""),
        ] {
            let (_t, path, _) = filled(2);
            Connection::open(&path).unwrap().execute_batch(sql).unwrap();
            for (who, e) in [
                ("verify", verify(&path, None).unwrap_err()),
                ("open", Archive::open(&path).err().unwrap()),
            ] {
                assert!(matches!(e, ArchiveError::Schema { .. }), "{who} {sql}: {e}");
                let e = e.to_string();
                assert!(
                    e.contains(&format!(
                        "archive {}: not an intact archive",
                        path.display()
                    )) && e.contains(needle),
                    "{who} {sql}: {e}"
                );
            }
        }
    }

    #[test]
    fn a_value_not_of_its_columns_type_names_its_record() {
        for (sql, needle) in [
            (
                "UPDATE appraisals SET at = 'yesterday' WHERE seq = 2",
                "record #2 (a at (time unreadable)): its at was altered",
            ),
            (
                "UPDATE appraisals SET target = X'07' WHERE seq = 2",
                "record #2 ((target unreadable) at 2027-01-15T08:01:00Z): its target was altered",
            ),
            (
                "UPDATE appraisals SET hash = 'x' WHERE seq = 2",
                "its hash was altered",
            ),
            (
                "UPDATE blobs SET data = CAST(data AS TEXT) WHERE data = CAST('cert' AS BLOB)",
                "record #1 (a at 2027-01-15T08:00:00Z): its certificate was altered",
            ),
        ] {
            let (_t, path, _) = filled(3);
            Connection::open(&path).unwrap().execute(sql, []).unwrap();
            let e = verify(&path, None).unwrap_err();
            assert!(matches!(e, ArchiveError::Record { .. }), "{sql}: {e}");
            assert!(e.to_string().contains(needle), "{sql}: {e}");
        }
        let (_t, path, _) = filled(1);
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE meta SET value = X'30' WHERE key = 'anchor_seq'", [])
            .unwrap();
        let e = verify(&path, None).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::Chain(d) if d.contains("meta anchor_seq was altered")),
            "{e}"
        );
    }

    #[test]
    fn text_from_the_archive_is_printed_escaped() {
        assert_eq!(printable("llama-eu-1"), "llama-eu-1");
        assert_eq!(
            printable("a\x1b[2J\u{9b}b\u{202e}c\n"),
            "a\\u{1b}[2J\\u{9b}b\\u{202e}c\\u{a}"
        );
        let (_t, path, _) = filled(3);
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE appraisals SET target = char(27) || '[2J' || char(27) || '[H' WHERE seq = 2",
                [],
            )
            .unwrap();
        let e = verify(&path, None).unwrap_err().to_string();
        assert!(
            e.contains("record #2 (\\u{1b}[2J\\u{1b}[H at ") && !e.contains('\x1b'),
            "{e:?}"
        );
    }

    #[test]
    fn one_watch_at_a_time_appends_and_readers_need_no_lock() {
        let (tmp, path, _) = filled(2);
        let a = Archive::open(&path).unwrap();
        let e = Archive::open(&path).err().unwrap();
        assert!(matches!(e, ArchiveError::Locked { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("another watch holds {}", path.display())),
            "{text}"
        );
        // Another name for the same file finds the same lock.
        let link = tmp.path().join("link.db");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(
            Archive::open(&link).err().unwrap(),
            ArchiveError::Locked { .. }
        ));
        // Auditors read while the watcher runs.
        assert_eq!(verify(&path, None).unwrap().records, 2);
        drop(a);
        let mut a = Archive::open(&link).unwrap();
        a.append(&record(2)).unwrap();
        assert_eq!(verify(&path, None).unwrap().records, 3);
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
