//! A test hook for fault injection (docs/reliability.md): while the file named by
//! `NETGUARD_FAULT_NFT_FILE` exists, every transaction netguard sends ends with a command the
//! kernel rejects (the deletion of a table that does not exist), so the whole batch fails
//! after the kernel has taken the commands before it, and nothing of it is committed. Without
//! the variable (every real deployment) this costs one `getenv` per transaction.

use super::Changes;
use nftables::schema::{NfCmd, NfListObject, NfObject, Table};

pub const ENV: &str = "NETGUARD_FAULT_NFT_FILE";

/// A table name netguard never creates.
const ABSENT_TABLE: &str = "netguard_fault_absent";

/// The batch for `changes` with the failing command appended, when the fault is on.
pub fn failing_batch(changes: &Changes) -> Option<String> {
    if !crate::fault::on(ENV) {
        return None;
    }
    let mut batch = changes.batch();
    let mut objects = batch.objects.into_owned();
    objects.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(
        Table {
            family: nftables::types::NfFamily::INet,
            name: ABSENT_TABLE.into(),
            ..Default::default()
        },
    ))));
    batch.objects = objects.into();
    tracing::warn!("{ENV}: this transaction is made to fail (fault injection)");
    serde_json::to_string(&batch).ok()
}
