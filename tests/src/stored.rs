//! A stopped host's stored records, rewritten through the host's own store backends: stands
//! for data that an earlier version of the plugin wrote and this one would no longer accept.

use anyhow::{Result, anyhow};
use webhooks_host::store::{self, Op};

/// Replaces every occurrence of `from` by `to` in every stored value; answers how many values
/// changed. The host using `db_url` must be stopped.
pub async fn replace_in_values(db_url: &str, from: &[u8], to: &[u8]) -> Result<usize> {
    let kv = store::open(db_url, 1).await.map_err(|e| anyhow!("{e}"))?;
    let mut after = None;
    let mut changed = 0;
    loop {
        let page = kv.scan(Vec::new(), after.clone(), 512, false).await?;
        let Some((last, _)) = page.last() else {
            return Ok(changed);
        };
        after = Some(last.clone());
        let ops: Vec<Op> = page
            .into_iter()
            .filter_map(|(key, value)| {
                let replaced = replace(&value, from, to);
                (replaced != value).then_some(Op::Put(key, replaced))
            })
            .collect();
        changed += ops.len();
        if !ops.is_empty() {
            kv.commit(Vec::new(), ops).await?;
        }
    }
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(from.len()).position(|window| window == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}
