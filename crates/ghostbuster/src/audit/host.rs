//! Host facts the checks depend on: the CPU count kube-proxy sizes the table by. (kube-proxy's
//! mode is asked with the one kube-proxy client, [`crate::kube_proxy`].)

/// The CPUs this process may run on, as Go's `runtime.NumCPU()` (which kube-proxy multiplies by
/// `maxPerCore`) counts them: the scheduler affinity mask.
pub fn cpus() -> u32 {
    // SAFETY: `cpu_set_t` is plain data (all zeroes is an empty set); sched_getaffinity writes at
    // most `size_of::<cpu_set_t>()` bytes into it, and CPU_COUNT only reads it.
    let n = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            libc::CPU_COUNT(&set)
        } else {
            0
        }
    };
    if n > 0 {
        n as u32
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_at_least_one_cpu() {
        assert!(cpus() >= 1);
    }
}
