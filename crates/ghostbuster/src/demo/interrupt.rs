//! Ctrl-C during the demo: the handler only sets a flag (nothing else is async-signal-safe); every
//! wait of the demo polls it, unwinds, and the labs' destructors delete their namespaces. The
//! handler is installed with `SA_RESETHAND`, so a second Ctrl-C kills at once; the next run then
//! removes what is left ([`netlab::cleanup_leftovers`]).

use std::sync::atomic::{AtomicBool, Ordering};

use super::Error;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// True once Ctrl-C (or SIGTERM) arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once Ctrl-C arrived: `?` after every step unwinds the demo.
pub fn check() -> Result<(), Error> {
    if interrupted() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Ends the process the way the signal would have, after the caller cleaned up: the parent (a
/// shell, CI) sees "killed by SIGINT" (status 130), not a normal exit.
pub fn reraise() -> ! {
    // SAFETY: restoring the default disposition and raising a signal have no memory effects.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::raise(libc::SIGINT);
    }
    std::process::exit(130)
}
