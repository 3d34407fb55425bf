//! The archive's hash chain (docs/formats.md §14): a record's hash, and the walk that checks
//! record after record, shared by the SQLite archive and its JSON-lines export so both are
//! checked by the same rules.

use sha2::{Digest as _, Sha256};

use super::archive::{ARCHIVE_FORMAT, ArchiveError, NewRecord};

/// One record with its blobs' bytes and its place in the chain, as read back from the archive
/// or from an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub seq: i64,
    pub record: NewRecord,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl Stored {
    /// An error about this record, named as auditors see it.
    pub fn error(&self, detail: String) -> ArchiveError {
        ArchiveError::Record {
            seq: self.seq,
            target: self.record.target.clone(),
            at: tdx_core::verify::time::format_unix(self.record.at),
            detail,
        }
    }
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The SHA-256 of a record's stored blobs: what its hash covers of them, and the names the
/// database stores them under. Worked out once per record (they can be large).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlobDigests {
    pub certificate: Option<[u8; 32]>,
    pub evidence: Option<[u8; 32]>,
    pub policy: [u8; 32],
}

impl BlobDigests {
    pub fn of(r: &NewRecord) -> Self {
        BlobDigests {
            certificate: r.certificate.as_deref().map(sha256),
            evidence: r.evidence.as_deref().map(sha256),
            policy: sha256(&r.policy),
        }
    }
}

/// The hash of record `seq` after `prev`: SHA-256 over the format name, `prev`, and every
/// field length-prefixed (an absent optional field is one 0 byte, a present one a 1 byte and
/// the field); the certificate, evidence and policy by their SHA-256 (`blobs`), as they are
/// stored.
pub(crate) fn record_hash(prev: &[u8], seq: i64, r: &NewRecord, blobs: &BlobDigests) -> [u8; 32] {
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    let opt = |h: &mut Sha256, b: Option<&[u8]>| match b {
        None => h.update([0]),
        Some(b) => {
            h.update([1]);
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        }
    };
    field(&mut h, ARCHIVE_FORMAT.as_bytes());
    field(&mut h, prev);
    h.update(seq.to_be_bytes());
    field(&mut h, r.target.as_bytes());
    field(&mut h, r.url.as_bytes());
    h.update(r.at.to_be_bytes());
    field(&mut h, r.verdict.as_bytes());
    opt(&mut h, r.failed_check.as_deref().map(str::as_bytes));
    opt(&mut h, blobs.certificate.as_ref().map(|d| d.as_slice()));
    opt(&mut h, blobs.evidence.as_ref().map(|d| d.as_slice()));
    opt(&mut h, r.challenge.as_deref());
    opt(&mut h, r.nonce.as_deref());
    field(&mut h, &blobs.policy);
    field(&mut h, r.report.as_bytes());
    field(&mut h, r.verifier_version.as_bytes());
    h.finalize().into()
}

/// What a walk found intact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub records: usize,
    pub head: [u8; 32],
    pub anchor_seq: i64,
}

/// The walk from an anchor: every record follows the one before (no gap, its `prev_hash` is
/// that record's hash), its hash is what its fields give; with a pinned head, that head must
/// be passed (a deleted tail removes it).
pub(crate) struct Walk {
    anchor_seq: i64,
    prev: (i64, [u8; 32]),
    pinned: Option<[u8; 32]>,
    pinned_found: bool,
    records: usize,
}

impl Walk {
    pub fn from_anchor(
        anchor_seq: i64,
        anchor_hash: [u8; 32],
        pinned: Option<[u8; 32]>,
    ) -> Result<Self, ArchiveError> {
        // Seq 0 is the chain's start, whose hash is fixed: an anchor claiming it with another
        // hash would let whoever can write the file start a new chain from any hash (a pinned
        // head's, say) and pass it off as unpruned.
        if anchor_seq < 0 || (anchor_seq == 0 && anchor_hash != [0; 32]) {
            return Err(ArchiveError::Chain(format!(
                "the chain's anchor (record #{anchor_seq}, {}) is not one a prune leaves: \
                 record #0 is the chain's start, 32 zero bytes",
                hex::encode(anchor_hash)
            )));
        }
        // A pinned head equal to an anchor that a prune moved names a record no longer in the
        // archive: whoever can write it could have deleted every record up to it and set the
        // anchor there, so nothing before the anchor can be vouched for.
        if anchor_seq != 0 && pinned == Some(anchor_hash) {
            return Err(ArchiveError::Chain(format!(
                "the pinned head {} is the archive's anchor (record #{anchor_seq}), not a record \
                 in it: the records up to it were pruned (or deleted) and cannot be checked; pin \
                 the head again after each prune",
                hex::encode(anchor_hash)
            )));
        }
        Ok(Self {
            anchor_seq,
            prev: (anchor_seq, anchor_hash),
            pinned,
            pinned_found: pinned.is_none() || pinned == Some(anchor_hash),
            records: 0,
        })
    }

    /// Take record `r`, whose blobs have the SHA-256 `blobs`.
    pub fn step(&mut self, r: &Stored, blobs: &BlobDigests) -> Result<(), ArchiveError> {
        let prev = self.prev;
        if Some(r.seq) != prev.0.checked_add(1) {
            return Err(r.error(format!(
                "follows record #{}: records #{}..#{} are missing (deleted)",
                prev.0,
                prev.0.saturating_add(1),
                r.seq.saturating_sub(1)
            )));
        }
        if r.prev_hash != prev.1 {
            return Err(r.error("does not follow the record before it (prev_hash differs)".into()));
        }
        let computed = record_hash(&prev.1, r.seq, &r.record, blobs);
        if r.hash != computed {
            return Err(r.error("was altered: its fields no longer give its hash".into()));
        }
        if self.pinned == Some(computed) {
            self.pinned_found = true;
        }
        self.prev = (r.seq, computed);
        self.records += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<Verified, ArchiveError> {
        if !self.pinned_found {
            return Err(ArchiveError::Chain(format!(
                "the pinned head {} is not in the chain (which starts after record #{} and ends \
                 at record #{} with {}): records were deleted from its end, or it was before \
                 the anchor and pruned",
                self.pinned.map(hex::encode).unwrap_or_default(),
                self.anchor_seq,
                self.prev.0,
                hex::encode(self.prev.1)
            )));
        }
        Ok(Verified {
            records: self.records,
            head: self.prev.1,
            anchor_seq: self.anchor_seq,
        })
    }
}
