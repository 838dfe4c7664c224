//! The one client of the node's kube-proxy, for the agent and `audit` alike: when it last synced
//! its rules and how (the agent's delete gate, [`crate::agent::gate::SyncTracker`]), whether it is
//! healthy, and its mode (IPVS: report only).
//!
//! - `GET http://127.0.0.1:10249/metrics`, sample `kubeproxy_sync_proxy_rules_last_timestamp_seconds`
//!   (a gauge of Unix seconds set after every successful sync, `pkg/proxy/metrics`). When several
//!   samples exist (a label per IP family) the *oldest* counts: the gate must wait for both.
//! - `GET http://127.0.0.1:10256/healthz`: `{"lastUpdated": "...", "currentTime": "...",
//!   "nodeEligible": true}`, times in Go's `time.Time.String()` layout
//!   (`2024-05-01 10:20:30.123456789 +0000 UTC m=+12.5`), not RFC 3339 (both are parsed).
//!   **`lastUpdated` is not a sync time**: while kube-proxy is healthy it answers the current
//!   time (`pkg/proxy/healthcheck/proxy_health.go`: "the returned lastUpdated value is recent if
//!   the server is healthy"). It proves only that no change waited longer than kube-proxy's health
//!   timeout (2 × its sync period). So [`KubeProxy::last_sync`] reads the metric only, and
//!   [`KubeProxy::healthz`] is a separate, weaker signal.
//! - `GET http://127.0.0.1:10249/proxyMode`: `iptables`, `nftables`, `ipvs`, ...
//!
//! The HTTP client ([`http`]) is a few lines over `tokio::net::TcpStream` (HTTP/1.1,
//! `Connection: close`, chunked bodies decoded, a size cap and one timeout around everything):
//! three loopback GETs do not justify an HTTP client stack (`explain --agent` reads the agent's own
//! `/debug/recent` with the same GET). Every URL is configurable; `https` is
//! not supported (kube-proxy serves these over plain HTTP).

use std::time::Duration;

use jiff::Timestamp;

mod http;

use http::{display, truncate};
pub use http::{get, get_blocking, parse_response, HttpUrl, Response};

pub const DEFAULT_METRICS_URL: &str = "http://127.0.0.1:10249/metrics";
pub const DEFAULT_HEALTHZ_URL: &str = "http://127.0.0.1:10256/healthz";
pub const DEFAULT_PROXY_MODE_URL: &str = "http://127.0.0.1:10249/proxyMode";
/// Loopback answers take milliseconds; a stuck kube-proxy must not stall the gate.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// kube-proxy's /metrics is tens of KiB; refuse anything absurd.
pub const MAX_RESPONSE: u64 = 8 * 1024 * 1024;
/// The gauge kube-proxy sets after each successful rule sync.
pub const SYNC_METRIC: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";
/// The histogram of every sync's duration (failed ones too), observed when the sync ends.
pub const SYNC_DURATION_SUM: &str = "kubeproxy_sync_proxy_rules_duration_seconds_sum";
pub const SYNC_DURATION_COUNT: &str = "kubeproxy_sync_proxy_rules_duration_seconds_count";
/// Counters of failed syncs (iptables mode, its partial syncs, nftables mode).
pub const SYNC_FAILURE_METRICS: [&str; 3] = [
    "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
    "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
    "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube-proxy URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "GET {url}: no answer within {timeout:?} (is kube-proxy running on this node with its \
         metrics/healthz address on loopback? see --kube-proxy-metrics-url)"
    )]
    Timeout { url: String, timeout: Duration },
    #[error("GET {url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GET {url}: answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: {reason}")]
    Malformed { url: String, reason: String },
    #[error("GET {url}: no sample of {metric} (kube-proxy has not synced yet, or this is not kube-proxy)")]
    NoSample { url: String, metric: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One reading of kube-proxy's sync metrics (`/metrics`), and of its `/healthz` when read.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SyncReading {
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds`: set when a sync *succeeds*, at its
    /// end (`pkg/proxy/metrics`). Not when it began.
    pub last_success: Option<Timestamp>,
    /// `kubeproxy_sync_proxy_rules_duration_seconds` `(sum, count)`: every sync, failed ones
    /// too, observed when it ends.
    pub duration: Option<(f64, f64)>,
    /// `..._iptables_restore_failures_total` + `..._nftables_sync_failures_total`.
    pub failures: Option<f64>,
    /// `/healthz` answered 200 (`Some(true)`) or 503 (`Some(false)`).
    pub healthy: Option<bool>,
}

/// The sum of every sample of `metric` (over its labels); `None` when it has none.
pub fn parse_metric_sum(text: &str, metric: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for v in metric_samples(text, metric) {
        found = true;
        sum += v;
    }
    found.then_some(sum)
}

/// The oldest sample of `metric` in a Prometheus text exposition (Unix seconds, as a float; NaN
/// and infinities are skipped). `None` when there is no usable sample.
pub fn parse_metric_min(text: &str, metric: &str) -> Option<f64> {
    metric_samples(text, metric).min_by(f64::total_cmp)
}

/// Every finite sample of `metric` (not of metrics that merely start with its name).
fn metric_samples<'a>(text: &'a str, metric: &'a str) -> impl Iterator<Item = f64> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(metric)?;
        let rest = if let Some(labelled) = rest.strip_prefix('{') {
            // Label values may contain '}' only inside quotes; kube-proxy's never do, but
            // skip quoted text anyway.
            let mut in_quotes = false;
            let mut escaped = false;
            let end = labelled.char_indices().find_map(|(i, c)| {
                match (c, in_quotes, escaped) {
                    (_, true, true) => escaped = false,
                    ('\\', true, false) => escaped = true,
                    ('"', _, false) => in_quotes = !in_quotes,
                    ('}', false, _) => return Some(i),
                    _ => {}
                }
                None
            })?;
            &labelled[end + 1..]
        } else if rest.starts_with([' ', '\t']) {
            rest
        } else {
            // Another metric with this one's name as a prefix (`..._seconds_count`).
            return None;
        };
        let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
        value.is_finite().then_some(value)
    })
}

/// Reads the sync metrics of a kube-proxy `/metrics` text: `None` without the sync gauge (not
/// kube-proxy, or one that never synced).
pub fn parse_sync_reading(text: &str) -> Option<SyncReading> {
    let last = from_unix_seconds(parse_metric_min(text, SYNC_METRIC)?)?;
    let duration =
        parse_metric_sum(text, SYNC_DURATION_SUM).zip(parse_metric_sum(text, SYNC_DURATION_COUNT));
    let failures = SYNC_FAILURE_METRICS
        .iter()
        .filter_map(|m| parse_metric_sum(text, m))
        .fold(None, |acc: Option<f64>, v| Some(acc.unwrap_or(0.0) + v));
    Some(SyncReading {
        // Unix epoch: kube-proxy has not synced since it started.
        last_success: (last.as_second() > 0).then_some(last),
        duration,
        failures,
        healthy: None,
    })
}

/// Unix seconds to a timestamp.
fn from_unix_seconds(secs: f64) -> Option<Timestamp> {
    Timestamp::from_nanosecond((secs * 1e9).round() as i128).ok()
}

/// A time as kube-proxy's /healthz writes it: Go's `time.Time.String()`
/// (`2006-01-02 15:04:05.999999999 -0700 MST`, maybe with ` m=+1.5`), or RFC 3339.
pub fn parse_go_time(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t);
    }
    let mut parts = s.split_whitespace();
    let (date, time, offset) = (parts.next()?, parts.next()?, parts.next()?);
    // The fourth word is the zone abbreviation (redundant with the offset), then maybe `m=±…`.
    if offset.len() != 5 || !offset.starts_with(['+', '-']) {
        return None;
    }
    let offset = format!("{}:{}", &offset[..3], &offset[3..]);
    format!("{date}T{time}{offset}").parse().ok()
}

/// kube-proxy's `/healthz` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthz {
    /// HTTP 200 (503 when a change has waited longer than its health timeout, or the node is
    /// being deleted).
    pub healthy: bool,
    /// The current time while healthy; the last sync of the late IP family otherwise. Not a sync
    /// time: see the module documentation.
    pub last_updated: Timestamp,
    pub current_time: Option<Timestamp>,
    pub node_eligible: Option<bool>,
}

/// Parses the `/healthz` body.
pub fn parse_healthz(body: &str) -> Result<(Timestamp, Option<Timestamp>, Option<bool>), String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("healthz is not JSON: {e}"))?;
    let time = |k: &str| v.get(k).and_then(|x| x.as_str()).and_then(parse_go_time);
    let last = v
        .get("lastUpdated")
        .and_then(|x| x.as_str())
        .ok_or("healthz has no lastUpdated")?;
    let last_updated =
        parse_go_time(last).ok_or_else(|| format!("unreadable lastUpdated {last:?}"))?;
    Ok((
        last_updated,
        time("currentTime"),
        v.get("nodeEligible").and_then(|x| x.as_bool()),
    ))
}

/// Where kube-proxy answers (flags `--kube-proxy-metrics-url`, `--kube-proxy-healthz-url`,
/// `--kube-proxy-mode-url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeProxyConfig {
    pub metrics_url: String,
    pub healthz_url: String,
    pub proxy_mode_url: String,
    pub timeout: Duration,
}

impl Default for KubeProxyConfig {
    fn default() -> Self {
        KubeProxyConfig {
            metrics_url: DEFAULT_METRICS_URL.to_string(),
            healthz_url: DEFAULT_HEALTHZ_URL.to_string(),
            proxy_mode_url: DEFAULT_PROXY_MODE_URL.to_string(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A client for the node's kube-proxy.
#[derive(Debug, Clone)]
pub struct KubeProxy {
    metrics: HttpUrl,
    healthz: HttpUrl,
    proxy_mode: HttpUrl,
    timeout: Duration,
}

impl KubeProxy {
    /// Validates the URLs.
    pub fn new(config: &KubeProxyConfig) -> Result<Self> {
        let parse = |url: &str| {
            HttpUrl::parse(url).map_err(|reason| Error::BadUrl {
                url: url.to_string(),
                reason,
            })
        };
        Ok(KubeProxy {
            metrics: parse(&config.metrics_url)?,
            healthz: parse(&config.healthz_url)?,
            proxy_mode: parse(&config.proxy_mode_url)?,
            timeout: config.timeout,
        })
    }

    async fn get_ok(&self, url: &HttpUrl) -> Result<Response> {
        let r = get(url, self.timeout).await?;
        if r.status != 200 {
            return Err(Error::Status {
                url: display(url),
                status: r.status,
            });
        }
        Ok(r)
    }

    /// When kube-proxy last synced its rules (`kubeproxy_sync_proxy_rules_last_timestamp_seconds`;
    /// the oldest sample when there are several). Unix epoch (0) means it has not synced since it
    /// started.
    pub async fn last_sync(&self) -> Result<Timestamp> {
        let r = self.get_ok(&self.metrics).await?;
        let url = || display(&self.metrics);
        let secs = parse_metric_min(&r.body, SYNC_METRIC).ok_or_else(|| Error::NoSample {
            url: url(),
            metric: SYNC_METRIC,
        })?;
        from_unix_seconds(secs).ok_or_else(|| Error::Malformed {
            url: url(),
            reason: format!("{SYNC_METRIC} {secs} is not a time"),
        })
    }

    /// kube-proxy's sync metrics: the end of its last successful sync, the duration histogram,
    /// the failure counters (see [`crate::agent::gate::SyncTracker`] for what they prove).
    pub async fn sync_reading(&self) -> Result<SyncReading> {
        let r = self.get_ok(&self.metrics).await?;
        parse_sync_reading(&r.body).ok_or_else(|| Error::NoSample {
            url: display(&self.metrics),
            metric: SYNC_METRIC,
        })
    }

    /// kube-proxy's `/healthz` (a 503 is an answer too: `healthy: false`).
    pub async fn healthz(&self) -> Result<Healthz> {
        let r = get(&self.healthz, self.timeout).await?;
        if r.status != 200 && r.status != 503 {
            return Err(Error::Status {
                url: display(&self.healthz),
                status: r.status,
            });
        }
        let (last_updated, current_time, node_eligible) =
            parse_healthz(&r.body).map_err(|reason| Error::Malformed {
                url: display(&self.healthz),
                reason,
            })?;
        Ok(Healthz {
            healthy: r.status == 200,
            last_updated,
            current_time,
            node_eligible,
        })
    }

    /// kube-proxy's mode, lowercase (`iptables`, `nftables`, `ipvs`, `kernelspace`).
    pub async fn proxy_mode(&self) -> Result<String> {
        let r = self.get_ok(&self.proxy_mode).await?;
        mode_word(&self.proxy_mode, &r.body)
    }
}

/// kube-proxy's mode from `url` (its `/proxyMode`), for callers without a runtime (`audit`): the
/// same client, on a thread of its own ([`get_blocking`]).
pub fn proxy_mode_blocking(url: &HttpUrl, timeout: Duration) -> Result<String> {
    let r = get_blocking(url, timeout)?;
    if r.status != 200 {
        return Err(Error::Status {
            url: display(url),
            status: r.status,
        });
    }
    mode_word(url, &r.body)
}

/// A `/proxyMode` body: one short word, lowercased.
fn mode_word(url: &HttpUrl, body: &str) -> Result<String> {
    let mode = body.trim();
    let word = !mode.is_empty()
        && mode.len() <= 32
        && mode
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !word {
        return Err(Error::Malformed {
            url: display(url),
            reason: format!("unexpected proxyMode body {:?}", truncate(mode, 40)),
        });
    }
    Ok(mode.to_ascii_lowercase())
}

/// kube-proxy's IPVS mode leaves a dummy `kube-ipvs0` interface holding every ClusterIP.
pub const IPVS_INTERFACE: &str = "kube-ipvs0";

/// Whether the namespace (`netns`, or ours) has a `kube-ipvs0` link. The lookup runs on a thread
/// inside the namespace: `if_nametoindex` asks the kernel through a socket of the caller's
/// network namespace (`/sys/class/net` would show the namespace sysfs was mounted in instead).
pub fn ipvs_interface_present(netns: Option<&str>) -> ctnetlink::Result<bool> {
    fn here() -> ctnetlink::Result<bool> {
        let name = std::ffi::CString::new(IPVS_INTERFACE).map_err(|_| ctnetlink::Error::Io {
            op: "look up kube-ipvs0",
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index != 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) | None | Some(0) => Ok(false),
            _ => Err(ctnetlink::Error::Io {
                op: "look up kube-ipvs0",
                source: err,
            }),
        }
    }
    match netns {
        None => here(),
        Some(ns) => ctnetlink::netns::run_in(ns, here)?,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped after a real kube-proxy 1.3x /metrics (Prometheus text 0.0.4 from client_golang).
    const METRICS: &str = "\
# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds
# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram
kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\"} 0
kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"+Inf\"} 42
kubeproxy_sync_proxy_rules_duration_seconds_sum 1.2345
kubeproxy_sync_proxy_rules_duration_seconds_count 42
# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds [ALPHA] The last time proxy rules were successfully synced
# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds 1.7149573123456e+09
# HELP kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds [ALPHA] The last time a sync of proxy rules was queued
# TYPE kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds 1.7149573200000e+09
";

    #[test]
    fn reads_the_sync_gauge_not_its_neighbours() {
        let v = parse_metric_min(METRICS, SYNC_METRIC).unwrap();
        assert_eq!(v, 1.7149573123456e9);
        let t = from_unix_seconds(v).unwrap();
        assert_eq!(t.as_millisecond(), 1_714_957_312_345);
        assert_eq!(parse_metric_min("# nothing\n", SYNC_METRIC), None);
        assert_eq!(
            parse_metric_min(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds NaN\n",
                SYNC_METRIC
            ),
            None
        );
    }

    #[test]
    fn reads_the_sync_histogram_and_failure_counters() {
        let text = format!(
            "{METRICS}kubeproxy_sync_proxy_rules_iptables_restore_failures_total 2\n\
             kubeproxy_sync_proxy_rules_nftables_sync_failures_total{{x=\"y\"}} 1\n"
        );
        let r = parse_sync_reading(&text).unwrap();
        assert_eq!(r.last_success.unwrap().as_millisecond(), 1_714_957_312_345);
        assert_eq!(r.duration, Some((1.2345, 42.0)));
        assert_eq!(r.failures, Some(3.0));
        let r = parse_sync_reading(METRICS).unwrap();
        assert_eq!(r.failures, None);
        assert!(parse_sync_reading("# nothing\n").is_none());
        // Never synced since it started: the gauge is 0.
        let r =
            parse_sync_reading("kubeproxy_sync_proxy_rules_last_timestamp_seconds 0\n").unwrap();
        assert_eq!((r.last_success, r.duration), (None, None));
    }

    #[test]
    fn several_families_give_the_oldest() {
        let text = "\
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 1.7e+09
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv6\",x=\"a}b\"} 1.6e+09 1714957312000
";
        assert_eq!(parse_metric_min(text, SYNC_METRIC), Some(1.6e9));
    }

    #[test]
    fn parses_go_and_rfc3339_times() {
        let t = parse_go_time("2024-05-06 01:01:52.345678901 +0000 UTC m=+1234.567890123").unwrap();
        assert_eq!(t.to_string(), "2024-05-06T01:01:52.345678901Z");
        let t = parse_go_time("2024-05-06 03:01:52 +0200 CEST").unwrap();
        assert_eq!(t.to_string(), "2024-05-06T01:01:52Z");
        let t = parse_go_time("2024-05-06T01:01:52Z").unwrap();
        assert_eq!(t.as_second(), 1_714_957_312);
        // Go's zero time: kube-proxy has never synced.
        assert!(parse_go_time("0001-01-01 00:00:00 +0000 UTC").is_some());
        assert!(parse_go_time("yesterday").is_none());
        assert!(parse_go_time("2024-05-06 01:01:52 UTC").is_none());
    }

    #[test]
    fn parses_healthz_bodies() {
        let body = r#"{"lastUpdated": "2024-05-06 01:01:52.1 +0000 UTC m=+95.2","currentTime": "2024-05-06 01:01:52.1 +0000 UTC m=+95.2", "nodeEligible": true}"#;
        let (last, now, eligible) = parse_healthz(body).unwrap();
        assert_eq!(last.as_second(), 1_714_957_312);
        assert_eq!(now, Some(last));
        assert_eq!(eligible, Some(true));
        // Older kube-proxy: no nodeEligible.
        let (_, _, eligible) = parse_healthz(
            r#"{"lastUpdated": "2019-01-01 00:00:00 +0000 UTC","currentTime": "2019-01-01 00:00:05 +0000 UTC"}"#,
        )
        .unwrap();
        assert_eq!(eligible, None);
        assert!(parse_healthz("ok").is_err());
        assert!(parse_healthz(r#"{"currentTime": "x"}"#).is_err());
    }

    #[test]
    fn rejects_bad_urls() {
        let cfg = KubeProxyConfig {
            metrics_url: "https://127.0.0.1:10249/metrics".into(),
            ..Default::default()
        };
        let e = KubeProxy::new(&cfg).unwrap_err();
        assert!(e.to_string().contains("only http://"), "{e}");
        assert!(KubeProxy::new(&KubeProxyConfig::default()).is_ok());
    }

    #[test]
    fn reads_the_mode_word() {
        let url = HttpUrl::parse(DEFAULT_PROXY_MODE_URL).unwrap();
        assert_eq!(mode_word(&url, "iptables").unwrap(), "iptables");
        assert_eq!(mode_word(&url, "IPVS\n").unwrap(), "ipvs");
        for bad in ["", "<html>hi</html>", &"x".repeat(33)] {
            assert!(mode_word(&url, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn our_namespace_has_no_ipvs_interface() {
        // The test machines run no kube-proxy in IPVS mode.
        assert!(!ipvs_interface_present(None).unwrap());
    }
}
