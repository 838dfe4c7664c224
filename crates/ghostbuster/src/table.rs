//! The conntrack table as the scan, the sweep and the agent's reactor use it: a dump (whole or
//! filtered), an exact read and an exact delete. [`Conntrack`] is the kernel's table; [`MemTable`]
//! is one in memory with the kernel's matching rules, so that the reactor's decisions (gate
//! waits, breakers, re-check before delete) are tested without root and without timing.

use std::ops::ControlFlow;

use ctnetlink::{Conntrack, DeleteKey, DeleteOutcome, DumpSummary, Filter, Flow, Lookup};

/// What the scan, the sweep and the reactor need of a conntrack table.
pub trait Table {
    /// Streams every entry that `filter` matches to `f` (which may stop the dump).
    fn dump<F>(&mut self, filter: &Filter, f: F) -> ctnetlink::Result<DumpSummary>
    where
        F: FnMut(&Flow) -> ControlFlow<()>;
    /// [`Table::dump`] where the table may decode on a second thread while it reads the next
    /// batch (the kernel's [`Conntrack::dump_pipelined`]); `f` must be `Send` for that. The same
    /// entries, in the same order.
    fn dump_pipelined<F>(&mut self, filter: &Filter, f: F) -> ctnetlink::Result<DumpSummary>
    where
        F: FnMut(&Flow) -> ControlFlow<()> + Send,
    {
        self.dump(filter, f)
    }
    /// Reads the entries that hold the keys' reply tuples now, one answer per key.
    fn get(&mut self, keys: &[DeleteKey]) -> ctnetlink::Result<Vec<Lookup>>;
    /// Deletes exactly the keys' entries (reply tuple, zone and, when given, id), one outcome per
    /// key.
    fn delete(&mut self, keys: &[DeleteKey]) -> ctnetlink::Result<Vec<DeleteOutcome>>;
}

impl Table for Conntrack {
    fn dump<F>(&mut self, filter: &Filter, f: F) -> ctnetlink::Result<DumpSummary>
    where
        F: FnMut(&Flow) -> ControlFlow<()>,
    {
        Conntrack::dump(self, filter, f)
    }

    fn dump_pipelined<F>(&mut self, filter: &Filter, f: F) -> ctnetlink::Result<DumpSummary>
    where
        F: FnMut(&Flow) -> ControlFlow<()> + Send,
    {
        Conntrack::dump_pipelined(self, filter, f)
    }

    fn get(&mut self, keys: &[DeleteKey]) -> ctnetlink::Result<Vec<Lookup>> {
        Conntrack::get(self, keys)
    }

    fn delete(&mut self, keys: &[DeleteKey]) -> ctnetlink::Result<Vec<DeleteOutcome>> {
        Conntrack::delete(self, keys)
    }
}

/// Something that happens to a [`MemTable`] between a read and the next write: a packet, a
/// timeout, kube-proxy re-creating a flow.
pub type Change = Box<dyn FnOnce(&mut Vec<Flow>) + Send>;

/// A conntrack table in memory, with the kernel's rules for the operations the agent uses: an
/// entry is found by its reply tuple and zone (the kernel hashes both directions; the agent
/// always asks by the reply tuple), and a delete that names an id leaves a newer entry with the
/// same tuple alone (`ENOENT`, like the kernel's `CTA_ID` check).
#[derive(Default)]
pub struct MemTable {
    pub flows: Vec<Flow>,
    /// Applied, in order, right before the next `get` or `delete`: what happened in the kernel
    /// between the dump the verdicts came from and the write.
    pub before_next_write: Vec<Change>,
    /// Make the next dump fail (a kernel error), once.
    pub fail_next_dump: bool,
    /// How many dumps were made, and how many of them were filtered (a whole-table walk either
    /// way in the kernel).
    pub dumps: u64,
    /// Every key an exact read was asked for, in order.
    pub read_keys: Vec<DeleteKey>,
    /// Every key a delete was asked for, in order.
    pub deleted_keys: Vec<DeleteKey>,
}

impl std::fmt::Debug for MemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemTable")
            .field("flows", &self.flows.len())
            .field("dumps", &self.dumps)
            .field("deleted_keys", &self.deleted_keys.len())
            .finish_non_exhaustive()
    }
}

impl MemTable {
    pub fn new(flows: impl IntoIterator<Item = Flow>) -> MemTable {
        MemTable {
            flows: flows.into_iter().collect(),
            ..MemTable::default()
        }
    }

    /// Queues a change to happen between the next read and write.
    pub fn then(&mut self, change: impl FnOnce(&mut Vec<Flow>) + Send + 'static) {
        self.before_next_write.push(Box::new(change));
    }

    fn changes_happen(&mut self) {
        for c in std::mem::take(&mut self.before_next_write) {
            c(&mut self.flows);
        }
    }

    fn position(&self, key: &DeleteKey) -> Option<usize> {
        self.flows
            .iter()
            .position(|f| f.family == key.family && f.reply == key.reply && f.zone == key.zone)
    }
}

impl Table for MemTable {
    fn dump<F>(&mut self, filter: &Filter, mut f: F) -> ctnetlink::Result<DumpSummary>
    where
        F: FnMut(&Flow) -> ControlFlow<()>,
    {
        self.dumps += 1;
        if std::mem::take(&mut self.fail_next_dump) {
            return Err(ctnetlink::Error::Io {
                op: "dump conntrack entries",
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        let mut sum = DumpSummary::default();
        for flow in &self.flows {
            sum.seen += 1;
            if !filter.matches(flow) {
                continue;
            }
            sum.matched += 1;
            if f(flow).is_break() {
                break;
            }
        }
        Ok(sum)
    }

    fn get(&mut self, keys: &[DeleteKey]) -> ctnetlink::Result<Vec<Lookup>> {
        self.changes_happen();
        self.read_keys.extend_from_slice(keys);
        Ok(keys
            .iter()
            .map(|k| match self.position(k) {
                Some(i) => Lookup::Found(self.flows[i]),
                None => Lookup::Gone,
            })
            .collect())
    }

    fn delete(&mut self, keys: &[DeleteKey]) -> ctnetlink::Result<Vec<DeleteOutcome>> {
        self.changes_happen();
        self.deleted_keys.extend_from_slice(keys);
        Ok(keys
            .iter()
            .map(|k| match self.position(k) {
                Some(i) if k.id.is_none_or(|id| self.flows[i].id == Some(id)) => {
                    self.flows.remove(i);
                    DeleteOutcome::Deleted
                }
                _ => DeleteOutcome::AlreadyGone,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctnetlink::{Status, Tuple};
    use std::net::{IpAddr, Ipv4Addr};

    fn flow(sport: u16, id: u32) -> Flow {
        let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5));
        let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
        let pod = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let mut f = Flow::new(
            Tuple::ports(client, sport, vip, 80, 6),
            Tuple::ports(pod, 8080, client, sport, 6),
        );
        f.status = Status::DST_NAT;
        f.timeout = Some(100);
        f.id = Some(id);
        f
    }

    /// The kernel's rule the agent leans on: a delete by reply tuple *and id* leaves a newer entry
    /// that took the tuple alone.
    #[test]
    fn a_delete_with_an_id_leaves_a_newer_entry_with_the_same_tuple() {
        let mut t = MemTable::new([flow(40000, 1), flow(40001, 2)]);
        let old = DeleteKey::from(&flow(40000, 1));
        t.then(|flows| {
            flows.retain(|f| f.id != Some(1));
            flows.push(flow(40000, 9));
        });
        assert_eq!(t.delete(&[old]).unwrap(), [DeleteOutcome::AlreadyGone]);
        assert_eq!(t.flows.len(), 2);
        let new = DeleteKey::from(&flow(40000, 9));
        assert_eq!(t.get(&[old]).unwrap(), [Lookup::Found(flow(40000, 9))]);
        assert_eq!(t.delete(&[new]).unwrap(), [DeleteOutcome::Deleted]);
        assert_eq!(t.get(&[new]).unwrap(), [Lookup::Gone]);
    }

    #[test]
    fn a_dump_applies_the_filter_and_can_fail_once() {
        let mut t = MemTable::new([flow(40000, 1), flow(40001, 2)]);
        let only = Filter::new().with_orig(ctnetlink::TupleMatch::new().with_sport(40001));
        let mut seen = Vec::new();
        let sum = t
            .dump(&only, |f| {
                seen.push(f.id);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!((sum.seen, sum.matched), (2, 1));
        assert_eq!(seen, [Some(2)]);
        t.fail_next_dump = true;
        assert!(t.dump(&only, |_| ControlFlow::Continue(())).is_err());
        assert!(t.dump(&only, |_| ControlFlow::Continue(())).is_ok());
        assert_eq!(t.dumps, 3);
    }
}
