//! What the kernel tests share: root or a printed skip, and a throwaway network namespace. The
//! unit tests use it as `crate::test_kernel`; the kernel tests in `tests/` include this file by
//! path.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Kernel tests need root. Outside CI they skip with a reason; in CI (`CI` set) a missing
/// privilege fails.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), and CI must run kernel tests");
    }
    eprintln!("SKIP {test}: needs root to create network namespaces (run as root, or set CI)");
    false
}

/// A namespace made with `ip netns add <prefix>-<pid>-<n>`, removed on drop (also on panic).
pub struct ThrowawayNs(pub String);

impl ThrowawayNs {
    pub fn new(prefix: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip")
            .success();
        assert!(ok, "ip netns add {name}");
        ThrowawayNs(name)
    }
}

impl Drop for ThrowawayNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
