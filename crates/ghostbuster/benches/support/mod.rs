//! Shared by the benchmarks: the machine-wide table limit, raised for a run and restored after.

const MAX_PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Restores `nf_conntrack_max` when dropped.
pub struct MaxGuard(Option<String>);

impl Drop for MaxGuard {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = std::fs::write(MAX_PATH, &old);
            println!("(restored nf_conntrack_max to {})", old.trim());
        }
    }
}

/// Makes room for `entries` (plus slack) in the machine-wide table, since a child namespace cannot
/// hold more than `nf_conntrack_max`; the returned guard puts the old limit back.
pub fn raise_conntrack_max(entries: u64) -> MaxGuard {
    let old_max = std::fs::read_to_string(MAX_PATH).unwrap_or_default();
    let want = entries + 1024;
    if old_max.trim().parse::<u64>().unwrap_or(0) >= want {
        return MaxGuard(None);
    }
    std::fs::write(MAX_PATH, want.to_string()).expect("raise nf_conntrack_max");
    println!(
        "(raised the machine-wide nf_conntrack_max from {} to {want} for this run)",
        old_max.trim()
    );
    MaxGuard(Some(old_max))
}
