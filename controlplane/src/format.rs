//! The layout of the records faas keeps in etcd, versioned.
//!
//! Every replica checks `<prefix>/meta/format` at start, before it reads a
//! record. A release reads the layouts up to its own [`STORE_FORMAT`]: on
//! older data it runs the migrations in order and records its format; on
//! data of a newer layout (a downgrade past a format change) it refuses to
//! start, since it would misread what it does not know. Data written before
//! the record existed is format 1: the layout has not changed since, as
//! older records decode as they are (protobuf fields are only ever added,
//! and functions of the "default" namespace keep their bare keys).
//!
//! Changing the layout: bump [`STORE_FORMAT`], add the step from the
//! previous format in [`migrate_step`] (idempotent: replicas of the new
//! release may run it at once, or again after a crash), and test it on
//! records written as the previous release wrote them.

use faas_proto::v1::StoreFormatRecord;

use crate::store::{Kind, Store, StoreError};

/// This release's layout.
pub const STORE_FORMAT: u32 = 1;
/// Where the format is recorded, under [`Kind::Meta`].
const RECORD: &str = "format";

/// What a replica does at start, given the recorded format.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Recorded as this release's format: nothing to do.
    Current,
    /// An older format, or nothing recorded (a new cluster, or data from
    /// before the record: format 1): migrate step by step from `from` (no
    /// step when it is this release's), then record.
    Migrate { from: u32 },
    /// A newer format than this release reads: refuse to start.
    TooNew { stored: u32 },
}

/// The plan for `stored` (None: no record) under a release of format `ours`.
pub fn plan(stored: Option<u32>, ours: u32) -> Plan {
    match stored {
        None => Plan::Migrate { from: 1 },
        Some(stored) if stored == ours => Plan::Current,
        Some(stored) if stored < ours => Plan::Migrate { from: stored },
        Some(stored) => Plan::TooNew { stored },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "the state in etcd is in format {stored} (recorded by faas {written_by}), and this \
         release ({ours_version}) reads formats up to {ours}: run a release that knows format \
         {stored}, or restore a backup taken before the upgrade"
    )]
    TooNew {
        stored: u32,
        written_by: String,
        ours: u32,
        ours_version: &'static str,
    },
    #[error("no migration from stored-data format {0} to {next}", next = .0 + 1)]
    NoMigration(u32),
    #[error("the stored-data format record: {0}")]
    Store(#[from] StoreError),
}

/// Checks the recorded format, migrates older data, records this
/// release's format. See the module's documentation.
pub async fn ensure(store: &Store) -> Result<(), FormatError> {
    let recorded: Option<(StoreFormatRecord, i64)> = store.get_revision(Kind::Meta, RECORD).await?;
    let stored = recorded.as_ref().map(|(r, _)| r.format);
    match plan(stored, STORE_FORMAT) {
        Plan::Current => Ok(()),
        Plan::TooNew { stored } => Err(FormatError::TooNew {
            stored,
            written_by: recorded.map(|(r, _)| r.written_by).unwrap_or_default(),
            ours: STORE_FORMAT,
            ours_version: faas_proto::VERSION,
        }),
        Plan::Migrate { from } => {
            for format in from..STORE_FORMAT {
                tracing::info!(from = format, to = format + 1, "migrating the stored data");
                migrate_step(store, format).await?;
            }
            let record = StoreFormatRecord {
                format: STORE_FORMAT,
                written_by: faas_proto::VERSION.to_string(),
                written_at_ms: crate::error::now_ms_f64() as i64,
            };
            // Only over what was read: a replica that recorded meanwhile
            // (the same format, or a newer one) is not overwritten.
            let written = match recorded {
                None => store.create(Kind::Meta, RECORD, &record).await?,
                Some((_, revision)) => {
                    store
                        .put_if_mod_revision(Kind::Meta, RECORD, &record, revision)
                        .await?
                }
            };
            if written {
                tracing::info!(format = STORE_FORMAT, "stored-data format recorded");
                Ok(())
            } else {
                // Someone else recorded first: check what they wrote.
                Box::pin(ensure(store)).await
            }
        }
    }
}

/// Moves the data from format `from` to `from + 1`.
async fn migrate_step(_store: &Store, from: u32) -> Result<(), FormatError> {
    // Format 1 is the first: no step exists yet.
    Err(FormatError::NoMigration(from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        assert_eq!(plan(None, 1), Plan::Migrate { from: 1 });
        assert_eq!(plan(Some(1), 1), Plan::Current);
        assert_eq!(plan(Some(2), 1), Plan::TooNew { stored: 2 });
        // A later release on data of this one, or from before the record.
        assert_eq!(plan(Some(1), 3), Plan::Migrate { from: 1 });
        assert_eq!(plan(None, 2), Plan::Migrate { from: 1 });
    }
}
