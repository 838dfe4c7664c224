//! The node agent (`ghostbuster agent`): keeps the cluster index current from watches, and removes
//! ghost flows within milliseconds of a backend leaving its Service — once the delete gate opens.
//!
//! - [`gate`]: the pure delete gate (sync, kube-proxy lag, evidence, circuit breaker);
//! - [`reactor`]: the one thread that dumps and deletes, fed with coalesced work;
//! - [`conntrack_events`]: NEW events toward backends already gone;
//! - [`cpu`]: what a pass costs the reactor's thread;
//! - [`prefetch`]: a removed backend's flows read while its gate is still closed;
//! - [`k8s_events`]: aggregated Kubernetes Events on Services;
//! - [`table_alarm`]: warnings when the table crosses 75 % and 90 %;
//! - [`lookups`]: pod and IP-holder lookups that run off the reactor and wake it;
//! - [`world`]: the reactor's view of kube-proxy, the API server and the telemetry;
//! - [`run`]: the wiring.

pub mod admin;
pub mod config;
pub mod conntrack_events;
pub mod cpu;
pub mod dataplane;
pub mod flow_index;
mod flow_keys;
pub mod gate;
pub mod k8s_events;
pub mod kube_proxy_reader;
pub mod lookups;
pub mod memory;
pub mod prefetch;
pub mod reactor;
pub mod run;
pub mod socket_ender;
pub mod supervisor;
pub mod table_alarm;
pub mod table_sampler;
pub mod watch;
pub mod world;

pub use config::Config;
pub use run::main;
