//! The live cluster source: the Kubernetes API through kube-rs.
//!
//! - [`watch_cluster`] keeps the agent's [`Index`](super::Index) current: it lists and watches
//!   Services, EndpointSlices, every Node (stripped to its addresses), ServiceCIDRs (when the API
//!   has them), Namespaces (for their `ghostbuster.io/mode` annotation) and the Pods **of this
//!   node only**, and sends [`Event`](super::Event)s (relists as Init / InitApply /
//!   InitDone) over a channel, objects stripped first. [`WatchHealth`] says whether every view is
//!   complete and recent, for the delete gate and `/readyz`.
//! - [`read_once`] lists everything once into an index (`scan`, `sweep`, `explain` without
//!   `--from-file`).
//! - [`PodChecker`] answers "is the pod named in this tombstone gone?" with one cached GET.
//! - [`IpHolders`] answers "which pods hold IP x?" (a ghost without a tombstone), rate-limited
//!   and with a timeout.
//!
//! Why not `kube_runtime::watcher`: its state machine swallows BOOKMARKs and re-watches
//! silently, so its consumer cannot tell a quiet healthy watch from a dead connection; the delete
//! gate needs exactly that ("fresh": an event or BOOKMARK recently). [`watch`](watch_cluster) is
//! the same state machine (paged list → watch from its resourceVersion → relist on 410 Gone)
//! with that made visible, and lists as client-go's reflector does.

mod backoff;
mod health;
mod ip_holders;
mod pod_check;
mod read;
mod strip;
mod watch;

use std::fmt;
use std::path::{Path, PathBuf};

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::Client;

pub use health::{resource_name, KindState, KindStatus, WatchHealth};
pub use ip_holders::{Holder, Holders, HoldersConfig, HoldersError, IpHolders};
pub use pod_check::{PodCheck, PodChecker};
pub use read::{read_once, ReadConfig};
pub use strip::{strip, MODE_ANNOTATION};
pub use watch::{watch_cluster, watch_cluster_with, WatchConfig, WatchTuning};

/// Why talking to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No kubeconfig was found and this is not a pod with a service account.
    #[error(
        "no Kubernetes API configured ({0}): pass --kubeconfig or --from-file, set KUBECONFIG, \
         or run in a pod with a service account"
    )]
    NoConfig(String),
    /// A kubeconfig given explicitly could not be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    /// A request failed: the API server is unreachable, refused us, or answered an error.
    #[error("cannot {what}: {}", Hint(source))]
    Api {
        /// What was tried, e.g. `list Services`.
        what: String,
        #[source]
        source: ::kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn api(what: impl Into<String>, source: ::kube::Error) -> Self {
        Error::Api {
            what: what.into(),
            source,
        }
    }

    /// The HTTP status the API server answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api {
                source: ::kube::Error::Api(s),
                ..
            } => Some(s.code),
            _ => None,
        }
    }

    /// True when the environment is at fault (API unreachable, credentials refused, RBAC
    /// missing, server errors), false for configuration the user gave (a bad kubeconfig, none at
    /// all).
    pub fn is_environment(&self) -> bool {
        matches!(self, Error::Api { .. })
    }
}

/// A kube error with what to do about it.
struct Hint<'a>(&'a ::kube::Error);

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ::kube::Error::Api(s) => {
                write!(
                    f,
                    "the API server answered {} {}: {}",
                    s.code, s.reason, s.message
                )?;
                match s.code {
                    401 => f.write_str(
                        " (the credentials were refused: check the kubeconfig's user or the \
                         service account token)",
                    ),
                    403 => f.write_str(
                        " (permission denied: bind the ghostbuster ClusterRole from deploy/, or \
                         use --from-file with an export)",
                    ),
                    _ => Ok(()),
                }
            }
            e => write!(
                f,
                "{e} (is the API server reachable? check --kubeconfig / KUBECONFIG and the \
                 network)"
            ),
        }
    }
}

/// The client configuration: the kubeconfig at `kubeconfig` (several paths separated by `:` are
/// merged in order, as kubectl merges `KUBECONFIG`), or else kube's inference (`KUBECONFIG`,
/// `~/.kube/config`, in-cluster service account).
pub async fn config(kubeconfig: Option<&Path>) -> Result<::kube::Config> {
    let paths: Vec<PathBuf> = kubeconfig
        .into_iter()
        .flat_map(|p| std::env::split_paths(p.as_os_str()))
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    if paths.is_empty() {
        return ::kube::Config::infer()
            .await
            .map_err(|e| Error::NoConfig(e.to_string()));
    }
    let shown = || {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    };
    let mut merged: Option<Kubeconfig> = None;
    for path in &paths {
        let kc = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        merged = Some(match merged {
            None => kc,
            Some(m) => m.merge(kc).map_err(|e| Error::Kubeconfig {
                path: shown(),
                message: e.to_string(),
            })?,
        });
    }
    let merged = merged.unwrap_or_default();
    ::kube::Config::from_custom_kubeconfig(merged, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig {
            path: shown(),
            message: e.to_string(),
        })
}

/// A client for `config` (plain `http://` servers work, for tests).
pub fn client_from(config: ::kube::Config) -> Result<Client> {
    let url = config.cluster_url.to_string();
    Client::try_from(config).map_err(|e| Error::Kubeconfig {
        path: url,
        message: e.to_string(),
    })
}

/// [`config`] then [`client_from`]: the agent's client.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    client_from(config(kubeconfig).await?)
}
