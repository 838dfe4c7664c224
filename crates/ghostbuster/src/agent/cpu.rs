//! CPU time of the calling thread: what a full pass costs, in user and system time together (the
//! kernel builds the dump's messages inside the reactor's own `recvmsg`, on its clock).
//!
//! Wall-clock time is not that cost: on a busy node the same pass takes longer without using
//! more of a core, and stretching the resync interval by it would be a busy node's penalty.

use std::time::Duration;

/// The calling thread's CPU time so far, or `None` where the clock cannot be read.
pub fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec that we own; no other preconditions.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

/// What running `f` cost the calling thread; its wall-clock time where the clock is missing.
pub fn cost_of<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let wall = std::time::Instant::now();
    let before = thread_cpu_time();
    let out = f();
    let cost = match (before, thread_cpu_time()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => wall.elapsed(),
    };
    (out, cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeping_costs_no_cpu_and_spinning_does() {
        let ((), slept) = cost_of(|| std::thread::sleep(Duration::from_millis(200)));
        assert!(slept < Duration::from_millis(50), "{slept:?}");
        let ((), spun) = cost_of(|| {
            let until = std::time::Instant::now() + Duration::from_millis(100);
            let mut x = 0u64;
            while std::time::Instant::now() < until {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        });
        // Scheduled out now and then on a loaded machine, but most of the 100 ms is ours.
        assert!(spun >= Duration::from_millis(20), "{spun:?}");
    }
}
