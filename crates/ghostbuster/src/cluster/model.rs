//! The small value types the compact index is made of.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::name::{Name, NamePool};

/// The L4 protocols a Service port can carry (`spec.ports[].protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// From an IP protocol number (as in a conntrack tuple).
    pub fn from_ip_proto(p: u8) -> Option<Self> {
        match p {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// From the Kubernetes spelling; an absent protocol means TCP, as the API server defaults it.
    pub fn from_k8s(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }

    /// Parses `tcp`, `UDP`, ... (command line).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// `TCP`, `UDP`, `SCTP`: the Kubernetes spelling.
    pub const fn as_k8s(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// `tcp`, `udp`, `sctp`: the conntrack / command-line spelling.
    pub const fn as_lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_k8s())
    }
}

/// An IP family, as Services (`spec.ipFamilies`) and EndpointSlices (`addressType`) name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum IpFamily {
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    pub fn from_k8s(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(IpFamily::V4),
            "IPv6" => Some(IpFamily::V6),
            _ => None,
        }
    }

    pub(crate) const fn bit(self) -> u8 {
        match self {
            IpFamily::V4 => 1,
            IpFamily::V6 => 2,
        }
    }
}

/// A set of IP families (bits of [`IpFamily::bit`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpFamilies(u8);

impl IpFamilies {
    pub fn insert(&mut self, f: IpFamily) {
        self.0 |= f.bit();
    }
    pub fn contains(self, f: IpFamily) -> bool {
        self.0 & f.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// EndpointSlice endpoint conditions, with kube-proxy's reading of absent values: `ready` and
/// `serving` absent mean true, `terminating` absent means false
/// (pkg/proxy/endpointslicecache.go, `discovery/v1` API docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Conditions(u8);

impl Conditions {
    const READY: u8 = 1;
    const SERVING: u8 = 2;
    const TERMINATING: u8 = 4;

    pub fn new(ready: bool, serving: bool, terminating: bool) -> Self {
        let mut c = 0;
        if ready {
            c |= Self::READY;
        }
        if serving {
            c |= Self::SERVING;
        }
        if terminating {
            c |= Self::TERMINATING;
        }
        Conditions(c)
    }

    /// From the API's optional booleans.
    pub fn from_api(ready: Option<bool>, serving: Option<bool>, terminating: Option<bool>) -> Self {
        Self::new(
            ready.unwrap_or(true),
            serving.unwrap_or(true),
            terminating.unwrap_or(false),
        )
    }

    pub fn ready(self) -> bool {
        self.0 & Self::READY != 0
    }
    /// Ready implies serving, whatever the object says.
    pub fn serving(self) -> bool {
        self.0 & (Self::SERVING | Self::READY) != 0
    }
    pub fn terminating(self) -> bool {
        self.0 & Self::TERMINATING != 0
    }
    /// The union of two sightings of the same endpoint (an endpoint listed in two slices).
    pub fn merge(self, other: Self) -> Self {
        Conditions(self.0 | other.0)
    }
}

impl fmt::Debug for Conditions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{ready: {}, serving: {}, terminating: {}}}",
            self.ready(),
            self.serving(),
            self.terminating()
        )
    }
}

impl Serialize for Conditions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Conditions", 3)?;
        st.serialize_field("ready", &self.ready())?;
        st.serialize_field("serving", &self.serving())?;
        st.serialize_field("terminating", &self.terminating())?;
        st.end()
    }
}

/// `namespace/name` of a namespaced object (cluster-scoped objects have an empty namespace).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    pub namespace: Name,
    pub name: Name,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: Name::new(namespace),
            name: Name::new(name),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An object uid. The API server generates canonical lower-case UUIDs; those are kept in 16
/// bytes instead of a 36-character string (one per endpoint and pod adds up at 100k endpoints).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Uid {
    Uuid([u8; 16]),
    Other(Name),
}

impl Uid {
    pub fn parse(s: &str, pool: &mut NamePool) -> Self {
        parse_uuid(s).map_or_else(|| Uid::Other(pool.intern(s)), Uid::Uuid)
    }
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut hex = b.iter().filter(|&&c| c != b'-');
    for byte in &mut out {
        let hi = lower_hex(*hex.next()?)?;
        let lo = lower_hex(*hex.next()?)?;
        *byte = hi << 4 | lo;
    }
    Some(out)
}

/// Only lower case, so that printing gives back the exact input.
fn lower_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uid::Other(n) => f.write_str(n),
            Uid::Uuid(b) => {
                for (i, byte) in b.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for Uid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The Pod an endpoint points at (`targetRef` with `kind: Pod`; its namespace is the slice's).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PodTarget {
    pub name: Name,
    pub uid: Option<Uid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_round_trips_and_odd_uids_are_kept_verbatim() {
        let mut pool = NamePool::default();
        let s = "0f4c6e2a-9b1d-4c3e-8a7f-1234567890ab";
        let u = Uid::parse(s, &mut pool);
        assert!(matches!(u, Uid::Uuid(_)));
        assert_eq!(u.to_string(), s);
        for odd in ["pod-uid-1", "0F4C6E2A-9B1D-4C3E-8A7F-1234567890AB", ""] {
            let u = Uid::parse(odd, &mut pool);
            assert!(matches!(u, Uid::Other(_)));
            assert_eq!(u.to_string(), odd);
        }
    }

    #[test]
    fn absent_conditions_read_as_kube_proxy_reads_them() {
        let c = Conditions::from_api(None, None, None);
        assert!(c.ready() && c.serving() && !c.terminating());
        let draining = Conditions::from_api(Some(false), Some(true), Some(true));
        assert!(!draining.ready() && draining.serving() && draining.terminating());
        assert!(Conditions::new(true, false, false).serving());
    }
}
