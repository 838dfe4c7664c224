//! Waiting on one descriptor with a timeout, so server loops can check their stop flag often
//! without spinning.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Waits until `fd` has any of `events` (`libc::POLLIN`, `POLLOUT`) or `timeout` passes.
/// Returns whether it became ready. EINTR counts as "not ready yet".
pub(crate) fn wait(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(rc > 0)
}
