//! One complete read of the cluster into an index, for the one-shot commands (`scan`, `sweep`,
//! `explain` without `--from-file`): the same objects as the recommended export
//! (`kubectl get services,endpointslices,pods,nodes,servicecidrs,namespaces -A`), listed in pages
//! and reduced page by page, so a large cluster never sits in memory as API structs.
//!
//! Unlike the agent's watches, these lists are consistent reads (no `resourceVersion`): the
//! command may delete on what it reads, so it reads the latest state rather than a cache.

use std::collections::BTreeMap;

use ::kube::Client;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use super::watch::{list_page, ListBounds, Watched};
use super::{Error, Result};
use crate::cluster::{Index, IndexConfig, Kind};

/// What [`read_once`] reads.
#[derive(Clone, Debug)]
pub struct ReadConfig {
    /// For the index; `node_name` also names the node whose Pods are read when `all_pods` is
    /// false.
    pub index: IndexConfig,
    /// Read ServiceCIDRs (a 404 is a warning: use `--service-cidr`).
    pub service_cidrs: bool,
    /// Read every Pod of the cluster (like the export), so that "no pod has this IP" is evidence
    /// ([`Index::pods_complete`]); otherwise only this node's.
    pub all_pods: bool,
    pub page_size: u32,
}

impl ReadConfig {
    pub fn new(index: IndexConfig) -> Self {
        ReadConfig {
            index,
            service_cidrs: true,
            all_pods: true,
            page_size: 500,
        }
    }
}

/// Lists the cluster once. Services, EndpointSlices and Namespaces must be readable (anything
/// else is an error: the view would be wrong, and without Namespaces a namespace annotated
/// `ghostbuster.io/mode: off` would be swept); Nodes, ServiceCIDRs and Pods that cannot be read
/// are a warning and leave the index without them (less evidence, never more). Objects the index
/// rejects are skipped with a warning. The index's snapshot time is when the read began.
pub async fn read_once(client: &Client, cfg: ReadConfig) -> Result<Index> {
    let started = Timestamp::now();
    let node = cfg.index.node_name.clone();
    let mut r = Reader {
        client,
        index: Index::new(cfg.index),
        page_size: cfg.page_size,
        counts: BTreeMap::new(),
    };
    r.all::<Service>(Kind::Service, None).await?;
    r.all::<EndpointSlice>(Kind::EndpointSlice, None).await?;
    r.all::<Namespace>(Kind::Namespace, None).await?;
    let node_filter = node.as_ref().map(|n| format!("metadata.name={n}"));
    if let Err(e) = r.all::<Node>(Kind::Node, None).await {
        // Without list permission on every Node, this node's own may still be readable.
        match node_filter.as_deref() {
            Some(f) if e.status() == Some(403) => {
                if let Err(e) = r.all::<Node>(Kind::Node, Some(f)).await {
                    warn_without(
                        &e,
                        "Nodes: NodePorts are matched on the namespace's own addresses only",
                    );
                }
            }
            _ => warn_without(
                &e,
                "Nodes: NodePorts are matched on the namespace's own addresses only",
            ),
        }
    }
    if cfg.service_cidrs {
        if let Err(e) = r.all::<ServiceCIDR>(Kind::ServiceCidr, None).await {
            if e.status() == Some(404) {
                tracing::warn!(
                    "the API server has no ServiceCIDRs (Kubernetes 1.33+); give the service \
                     ranges with --service-cidr"
                );
            } else {
                warn_without(
                    &e,
                    "ServiceCIDRs: give the service ranges with --service-cidr",
                );
            }
        }
    }
    let pods_filter = if cfg.all_pods {
        None
    } else {
        node.map(|n| format!("spec.nodeName={n}"))
    };
    if cfg.all_pods || pods_filter.is_some() {
        match r.all::<Pod>(Kind::Pod, pods_filter.as_deref()).await {
            Ok(()) => r.index.set_pods_complete(cfg.all_pods),
            Err(e) => warn_without(
                &e,
                "Pods: a backend's absence is not evidence that it is gone",
            ),
        }
    }
    r.index.set_snapshot_time(Some(started));
    tracing::debug!(objects = ?r.counts, "read the cluster");
    Ok(r.index)
}

fn warn_without(e: &Error, consequence: &str) {
    tracing::warn!("{e}; continuing without {consequence}");
}

struct Reader<'a> {
    client: &'a Client,
    index: Index,
    page_size: u32,
    counts: BTreeMap<Kind, usize>,
}

impl Reader<'_> {
    /// Lists every object of `kind` (matching `fields`) into the index, page by page.
    async fn all<K: Watched>(&mut self, kind: Kind, fields: Option<&str>) -> Result<()> {
        let mut token: Option<String> = None;
        let now = Timestamp::now();
        loop {
            let page = list_page::<K>(
                self.client,
                fields,
                self.page_size,
                token.as_deref(),
                false,
                ListBounds::default(),
            )
            .await
            .map_err(|e| Error::api(format!("list {kind}s"), e))?;
            let mut items = page
                .items()
                .map_err(|e| Error::api(format!("list {kind}s"), e))?;
            while let Some(item) = items.next_object::<K>() {
                let obj = item
                    .map_err(|e| Error::api(format!("list {kind}s"), e))?
                    .into_object();
                match self.index.insert(&obj, now) {
                    Ok(()) => *self.counts.entry(kind).or_default() += 1,
                    Err(e) => tracing::warn!("skipped: {e}"),
                }
            }
            match items.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(next) => token = Some(next),
                None => return Ok(()),
            }
        }
    }
}
