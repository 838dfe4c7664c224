//! Exit codes, an interface users script against (see README "Exit codes").

use std::fmt;

/// The process exit codes. When several apply, the highest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitCode {
    Ok = 0,
    /// `--exit-code` and something was found (or remains).
    Found = 1,
    /// Usage or input error: nothing was changed.
    Input = 2,
    /// Environment error: no permission, no conntrack, no such namespace.
    Environment = 3,
    /// Some deletes failed.
    DeleteFailed = 4,
    /// `sweep`'s circuit breaker held: the view would remove more than `--max-delete-percent` of
    /// the service flows, so nothing was removed.
    CircuitBreaker = 5,
}

/// An error that carries the exit code it should produce.
#[derive(Debug)]
pub struct CodedError {
    pub code: ExitCode,
    pub error: anyhow::Error,
}

impl fmt::Display for CodedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for CodedError {}

/// Marks an error as bad input (exit 2).
pub fn input_error(e: impl Into<anyhow::Error>) -> anyhow::Error {
    CodedError {
        code: ExitCode::Input,
        error: e.into(),
    }
    .into()
}

/// The exit code an error should produce: environment errors from the kernel layer map to 3,
/// errors marked with [`input_error`] to 2, anything else to 2 as well (we never exit 1 on error,
/// since 1 means "found something").
pub fn code_of(e: &anyhow::Error) -> ExitCode {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<CodedError>() {
            return c.code;
        }
        if let Some(ct) = cause.downcast_ref::<ctnetlink::Error>() {
            if ct.is_environment() {
                return ExitCode::Environment;
            }
        }
    }
    ExitCode::Input
}
