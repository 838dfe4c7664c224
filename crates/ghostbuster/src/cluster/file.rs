//! Loading the cluster from `kubectl` output: `--from-file PATH` (`-` for stdin).
//!
//! Accepts JSON or YAML; a `List` (`kubectl get services,endpointslices,pods,nodes,servicecidrs,
//! namespaces -A -o json`), a typed list (`ServiceList` from the raw API, whose items carry no `kind`), a single
//! object, a JSON array of objects, several concatenated JSON documents, or multi-document YAML.
//! List items are streamed one at a time into the [`Index`] and dropped, so a 100 MB export never
//! sits in memory as API structs. Other kinds are counted, not failed on: one [`Warning`] per kind.
//! A file that does not parse, or an object the index rejects, is an [`Error`] naming the file and
//! the line and column.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as _;
use serde_json::{Map, Value};

use super::event::{Kind, Object};
use super::index::{Index, IndexConfig};

/// Why loading failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    /// Syntax errors and rejected objects, with the position the parser had reached.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Objects of a kind ghostbuster does not read, counted once per kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub api_version: String,
    pub kind: String,
    pub count: usize,
    /// The first file it was seen in.
    pub file: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ignored {} object{} of kind {} ({}), first in {}: only Services, EndpointSlices \
             (discovery.k8s.io/v1), Nodes, ServiceCIDRs, Pods and Namespaces are read",
            self.count,
            if self.count == 1 { "" } else { "s" },
            self.kind,
            if self.api_version.is_empty() {
                "no apiVersion"
            } else {
                &self.api_version
            },
            self.file
        )
    }
}

/// The result of a load.
#[derive(Debug)]
pub struct Loaded {
    pub index: Index,
    /// When the cluster was observed: `--snapshot-time`, else the newest file modification time
    /// (stdin counts as read now).
    pub snapshot_time: Timestamp,
    pub warnings: Vec<Warning>,
    /// Objects read per kind.
    pub objects: BTreeMap<Kind, usize>,
    /// Pods with `spec.hostNetwork`: their IPs are their nodes' addresses.
    pub host_network_pods: usize,
}

impl Loaded {
    /// What this view lacks that a verdict leans on (see [`gaps`]).
    pub fn gaps(&self) -> Vec<Gap> {
        gaps(&self.objects, self.host_network_pods)
    }
}

/// A kind the verdicts lean on that an export does not hold. Each costs something different, so
/// the commands treat each differently (`cli::cluster_args::judge_export`): the view is wrong
/// (refuse), an operator's opt-out is invisible (a sweep refuses unless told), or some evidence
/// is missing and the flows it would have condemned are kept (a warning).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gap {
    /// Services without any EndpointSlice: every backend of every Service looks like it left, so
    /// every UDP flow would be `deselected` or `endpoint_gone`, hence removed.
    EndpointSlices,
    /// No Namespace: a namespace-level `ghostbuster.io/mode: off|report` is invisible, and the
    /// flows the operator opted out of look removable.
    Namespaces,
    /// Pods with `hostNetwork` but no Node: a node's address looks like an ordinary pod IP, so a
    /// host-network pod created on that node after a flow began would pass for an IP reuse.
    Nodes,
    /// No Pod: no flow can be judged `pod_absent`; TCP/SCTP flows to endpoints that left are kept.
    Pods,
}

impl Gap {
    /// The kind as `kubectl` and the messages name it.
    pub fn kind(self) -> &'static str {
        match self {
            Gap::EndpointSlices => "EndpointSlices",
            Gap::Namespaces => "Namespaces",
            Gap::Nodes => "Nodes",
            Gap::Pods => "Pods",
        }
    }

    /// What the verdicts lose without it.
    pub fn consequence(self) -> &'static str {
        match self {
            Gap::EndpointSlices => {
                "without EndpointSlices every backend of every Service looks gone, and every \
                 service flow would be judged stale"
            }
            Gap::Namespaces => {
                "without Namespaces a namespace's ghostbuster.io/mode annotation (off or report) \
                 is invisible, and flows its owner opted out of look removable"
            }
            Gap::Nodes => {
                "without Nodes the addresses of hostNetwork pods are not known to be node \
                 addresses, and a host-network pod could pass for a pod that reused an IP"
            }
            Gap::Pods => {
                "without Pods no backend can be shown absent: TCP and SCTP flows to endpoints \
                 that left are kept (UDP and half-open flows are still removed)"
            }
        }
    }
}

/// What an export with `objects` per kind (and `host_network_pods` among its Pods) lacks. Pure:
/// the rules are unit-tested. An export without Services is not judged here: it is the wrong
/// file, refused before this is asked.
pub fn gaps(objects: &BTreeMap<Kind, usize>, host_network_pods: usize) -> Vec<Gap> {
    let has = |k: Kind| objects.get(&k).is_some_and(|n| *n > 0);
    let mut out = Vec::new();
    if has(Kind::Service) && !has(Kind::EndpointSlice) {
        out.push(Gap::EndpointSlices);
    }
    if !has(Kind::Namespace) {
        out.push(Gap::Namespaces);
    }
    if host_network_pods > 0 && !has(Kind::Node) {
        out.push(Gap::Nodes);
    }
    if !has(Kind::Pod) {
        out.push(Gap::Pods);
    }
    out
}

/// Loads `paths` (`-` is stdin) into one index.
pub fn load(
    paths: &[PathBuf],
    config: IndexConfig,
    snapshot_time: Option<Timestamp>,
) -> Result<Loaded> {
    let mut loader = Loader::new(config);
    for p in paths {
        loader.add_path(p)?;
    }
    Ok(loader.finish(snapshot_time))
}

/// Builds an index from several sources.
pub struct Loader {
    index: Index,
    now: Timestamp,
    newest: Option<Timestamp>,
    ignored: BTreeMap<(String, String), Warning>,
    objects: BTreeMap<Kind, usize>,
    host_network_pods: usize,
}

impl Loader {
    pub fn new(config: IndexConfig) -> Self {
        Loader {
            index: Index::new(config),
            now: Timestamp::now(),
            newest: None,
            ignored: BTreeMap::new(),
            objects: BTreeMap::new(),
            host_network_pods: 0,
        }
    }

    /// Reads a file, or stdin for `-`.
    pub fn add_path(&mut self, path: &Path) -> Result<()> {
        if path.as_os_str() == "-" {
            self.seen_at(self.now);
            return self.add_reader("<stdin>", io::stdin().lock());
        }
        let name = path.display().to_string();
        let io_err = |source| Error::Io {
            file: name.clone(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let mtime = file.metadata().and_then(|m| m.modified()).map_err(io_err)?;
        self.seen_at(Timestamp::try_from(mtime).unwrap_or(self.now));
        self.add_reader(&name, file)
    }

    /// Reads one source; `name` is used in messages.
    pub fn add_reader(&mut self, name: &str, reader: impl Read) -> Result<()> {
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        let io_err = |source| Error::Io {
            file: name.to_owned(),
            source,
        };
        let first = loop {
            let buf = reader.fill_buf().map_err(io_err)?;
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => break Some(buf[i]),
                None if buf.is_empty() => break None,
                None => {
                    let n = buf.len();
                    reader.consume(n);
                }
            }
        };
        match first {
            None => Err(Error::Invalid {
                file: name.to_owned(),
                message: "is empty".into(),
            }),
            Some(b'{' | b'[') => self.add_json(name, reader),
            Some(_) => {
                let mut text = String::new();
                reader.read_to_string(&mut text).map_err(io_err)?;
                self.add_yaml(name, &text)
            }
        }
    }

    /// Reads JSON or YAML text.
    pub fn add_str(&mut self, name: &str, text: &str) -> Result<()> {
        self.add_reader(name, text.as_bytes())
    }

    /// The index and what was seen. The snapshot time is `snapshot_time` if given.
    pub fn finish(mut self, snapshot_time: Option<Timestamp>) -> Loaded {
        let snapshot_time = snapshot_time.or(self.newest).unwrap_or(self.now);
        self.index.set_snapshot_time(Some(snapshot_time));
        let pods = self.objects.get(&Kind::Pod).copied().unwrap_or(0);
        self.index.set_pods_complete(pods > 0);
        Loaded {
            index: self.index,
            snapshot_time,
            warnings: self.ignored.into_values().collect(),
            objects: self.objects,
            host_network_pods: self.host_network_pods,
        }
    }

    fn seen_at(&mut self, t: Timestamp) {
        self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
    }

    fn add_json(&mut self, name: &str, reader: impl Read) -> Result<()> {
        let mut de = serde_json::Deserializer::from_reader(reader);
        let mut doc = 0;
        loop {
            doc += 1;
            let seed = DocumentSeed {
                sink: Sink {
                    loader: self,
                    file: name,
                },
                doc,
            };
            seed.deserialize(&mut de)
                .map_err(|e| json_error(name, &e))?;
            if de.end().is_ok() {
                return Ok(());
            }
        }
    }

    fn add_yaml(&mut self, name: &str, text: &str) -> Result<()> {
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let seed = DocumentSeed {
                sink: Sink {
                    loader: self,
                    file: name,
                },
                doc: i + 1,
            };
            seed.deserialize(doc).map_err(|e| yaml_error(name, &e))?;
        }
        Ok(())
    }

    /// One object: typed and indexed if its kind is ours, counted otherwise.
    fn object(&mut self, file: &str, value: Value, list_kind: Option<&str>) -> Result<(), String> {
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let (api_version, kind) = match (text(&value, "apiVersion"), text(&value, "kind")) {
            (a, Some(k)) => (a.unwrap_or_default(), k),
            // Raw API lists (`ServiceList`) leave kind and apiVersion out of their items.
            (a, None) => match list_kind.and_then(|l| l.strip_suffix("List")) {
                Some(k) if !k.is_empty() => (a.unwrap_or_default(), k.to_owned()),
                _ => return Err("object has no \"kind\"".into()),
            },
        };
        let Some(k) = Kind::from_type(&api_version, &kind)
            .or_else(|| api_version.is_empty().then(|| item_kind(&kind)).flatten())
        else {
            let w = self
                .ignored
                .entry((api_version.clone(), kind.clone()))
                .or_insert_with(|| Warning {
                    api_version,
                    kind,
                    count: 0,
                    file: file.to_owned(),
                });
            w.count += 1;
            return Ok(());
        };
        let name = describe(&value);
        let typed = |e: serde_json::Error| format!("{k} {name}: {e}");
        let obj: Object = match k {
            Kind::Service => {
                Object::Service(Box::new(serde_json::from_value(value).map_err(typed)?))
            }
            Kind::EndpointSlice => {
                Object::EndpointSlice(Box::new(serde_json::from_value(value).map_err(typed)?))
            }
            Kind::Node => Object::Node(Box::new(serde_json::from_value(value).map_err(typed)?)),
            Kind::ServiceCidr => {
                Object::ServiceCidr(Box::new(serde_json::from_value(value).map_err(typed)?))
            }
            Kind::Pod => {
                let pod: k8s_openapi::api::core::v1::Pod =
                    serde_json::from_value(value).map_err(typed)?;
                let host_network = pod.spec.as_ref().and_then(|s| s.host_network);
                self.host_network_pods += usize::from(host_network == Some(true));
                Object::Pod(Box::new(pod))
            }
            Kind::Namespace => {
                Object::Namespace(Box::new(serde_json::from_value(value).map_err(typed)?))
            }
        };
        self.index
            .insert(&obj, self.now)
            .map_err(|e| e.to_string())?;
        *self.objects.entry(k).or_default() += 1;
        Ok(())
    }
}

/// A kind name alone, for items of a raw typed list (their apiVersion is the list's).
fn item_kind(kind: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| k.as_str() == kind)
}

/// `namespace/name` of an untyped object, for messages.
fn describe(value: &Value) -> String {
    let m = value.get("metadata");
    let get = |k: &str| m.and_then(|m| m.get(k)).and_then(Value::as_str);
    match (get("namespace"), get("name")) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.to_owned(),
        _ => "<unnamed>".to_owned(),
    }
}

fn json_error(file: &str, e: &serde_json::Error) -> Error {
    Error::Parse {
        file: file.to_owned(),
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    }
}

fn yaml_error(file: &str, e: &serde_yaml_ng::Error) -> Error {
    match e.location() {
        Some(loc) => Error::Parse {
            file: file.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message: strip_position(&e.to_string()),
        },
        None => Error::Invalid {
            file: file.to_owned(),
            message: e.to_string(),
        },
    }
}

/// serde_json and serde_yaml_ng append " at line L column C" (libyaml adds the context's position
/// too); the position is printed once, in front.
fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_owned(),
        _ => msg.to_owned(),
    }
}

/// Where the objects go.
struct Sink<'l> {
    loader: &'l mut Loader,
    file: &'l str,
}

/// One top-level document: a list (items streamed), one object, or an array of objects.
struct DocumentSeed<'l> {
    sink: Sink<'l>,
    doc: usize,
}

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes object or List")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(()) // an empty YAML document
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        let Sink { loader, file } = self.sink;
        while seq
            .next_element_seed(ItemSeed {
                loader: &mut *loader,
                file,
                list_kind: None,
                place: Place::Item(i),
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Sink { loader, file } = self.sink;
        let mut fields = Map::new();
        let mut was_list = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                was_list = true;
                let list_kind = fields
                    .get("kind")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                map.next_value_seed(ItemsSeed {
                    loader: &mut *loader,
                    file,
                    list_kind,
                })?;
            } else {
                let v: Value = map.next_value()?;
                fields.insert(key, v);
            }
        }
        if was_list {
            return Ok(());
        }
        loader
            .object(file, Value::Object(fields), None)
            .map_err(|e| de::Error::custom(Place::Document(self.doc).with(&e)))
    }
}

/// Where in a file an object sits, for messages.
#[derive(Clone, Copy)]
enum Place {
    Document(usize),
    Item(usize),
}

impl Place {
    fn with(self, msg: &str) -> String {
        match self {
            Place::Document(1) => msg.to_owned(),
            Place::Document(n) => format!("document {n}: {msg}"),
            Place::Item(i) => format!("items[{i}]: {msg}"),
        }
    }
}

/// The `items` array of a list.
struct ItemsSeed<'l> {
    loader: &'l mut Loader,
    file: &'l str,
    list_kind: Option<String>,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of Kubernetes objects")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(()) // "items": null
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(ItemSeed {
                loader: &mut *self.loader,
                file: self.file,
                list_kind: self.list_kind.as_deref(),
                place: Place::Item(i),
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
}

/// One list item, parsed alone and handed to the index before the next is read.
struct ItemSeed<'l> {
    loader: &'l mut Loader,
    file: &'l str,
    list_kind: Option<&'l str>,
    place: Place,
}

impl<'de> DeserializeSeed<'de> for ItemSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let value = Value::deserialize(d)?;
        if !value.is_object() {
            return Err(de::Error::custom(
                self.place.with("expected a Kubernetes object"),
            ));
        }
        self.loader
            .object(self.file, value, self.list_kind)
            .map_err(|e| de::Error::custom(self.place.with(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(kinds: &[Kind]) -> BTreeMap<Kind, usize> {
        kinds.iter().map(|k| (*k, 3)).collect()
    }

    #[test]
    fn the_recommended_export_lacks_nothing() {
        let all = objects(&Kind::ALL);
        assert_eq!(gaps(&all, 4), []);
        let no_cidrs = objects(&[
            Kind::Service,
            Kind::EndpointSlice,
            Kind::Pod,
            Kind::Node,
            Kind::Namespace,
        ]);
        assert_eq!(
            gaps(&no_cidrs, 4),
            [],
            "ServiceCIDRs only widen what is recognised"
        );
    }

    #[test]
    fn each_missing_kind_is_named() {
        let without = |k: Kind| {
            let mut o = objects(&Kind::ALL);
            o.remove(&k);
            o
        };
        assert_eq!(
            gaps(&without(Kind::EndpointSlice), 0),
            [Gap::EndpointSlices]
        );
        assert_eq!(gaps(&without(Kind::Namespace), 0), [Gap::Namespaces]);
        assert_eq!(gaps(&without(Kind::Pod), 0), [Gap::Pods]);
        // Nodes matter once a host-network pod's IP (a node's address) is in the view.
        assert_eq!(gaps(&without(Kind::Node), 0), []);
        assert_eq!(gaps(&without(Kind::Node), 1), [Gap::Nodes]);
        // A kind listed with zero objects is a kind not exported.
        let mut empty_slices = objects(&Kind::ALL);
        empty_slices.insert(Kind::EndpointSlice, 0);
        assert_eq!(gaps(&empty_slices, 0), [Gap::EndpointSlices]);
        let only_services = objects(&[Kind::Service]);
        assert_eq!(
            gaps(&only_services, 0),
            [Gap::EndpointSlices, Gap::Namespaces, Gap::Pods]
        );
    }
}
