//! Collections of instances: those of one service ordered by id, and those
//! attached to one lease.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use muster_types::CompactString;

use crate::Instance;

use crate::ServiceKey;

/// An instance ordered, compared and looked up by its id alone.
#[derive(Clone)]
struct ById(Arc<Instance>);

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.id.as_str().cmp(other.0.id.as_str())
    }
}

/// The instances of a service, by id: a map from id to instance that keeps
/// the id only once, in the instance (a B-tree entry is one pointer).
#[derive(Clone, Default)]
pub struct Instances(BTreeSet<ById>);

impl Instances {
    /// No instances.
    pub fn new() -> Self {
        Instances::default()
    }

    /// The instance with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Instance>> {
        self.0.get(id).map(|i| &i.0)
    }

    /// Whether an instance has this id.
    pub fn contains_key(&self, id: &str) -> bool {
        self.0.contains(id)
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The instances, ordered by id.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Arc<Instance>> + ExactSizeIterator {
        self.0.iter().map(|i| &i.0)
    }

    /// The ids, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &CompactString> + ExactSizeIterator {
        self.0.iter().map(|i| &i.0.id)
    }

    /// `(id, instance)` pairs, ordered by id.
    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (&CompactString, &Arc<Instance>)> + ExactSizeIterator {
        self.0.iter().map(|i| (&i.0.id, &i.0))
    }

    /// Inserts or replaces the instance with the same id; returns the one
    /// replaced.
    pub fn insert(&mut self, instance: Arc<Instance>) -> Option<Arc<Instance>> {
        self.0.replace(ById(instance)).map(|i| i.0)
    }

    /// Removes the instance with this id.
    pub fn remove(&mut self, id: &str) -> Option<Arc<Instance>> {
        self.0.take(id).map(|i| i.0)
    }
}

/// Equal when they hold equal instances (not merely the same ids).
impl PartialEq for Instances {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .values()
                .zip(other.values())
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

impl Eq for Instances {}

impl fmt::Debug for Instances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<Arc<Instance>> for Instances {
    fn from_iter<I: IntoIterator<Item = Arc<Instance>>>(iter: I) -> Self {
        let mut out = Instances::new();
        for i in iter {
            out.insert(i);
        }
        out
    }
}

/// One instance attached to a lease: its service and id.
pub type LeaseMember = (ServiceKey, CompactString);

/// Leases with at most this many instances keep them in a sorted vector.
const FEW_MEMBERS: usize = 16;

/// The instances attached to a lease, ordered by service and id. Most
/// leases hold one instance (a registration with a TTL) or a handful (one
/// client's), so up to 16 are kept in one small sorted vector; larger sets
/// move to a B-tree.
#[derive(Clone, Default)]
pub struct LeaseMembers(Members);

#[derive(Clone)]
enum Members {
    /// Sorted, at most `FEW_MEMBERS`.
    Few(Vec<LeaseMember>),
    /// Boxed, so the enum stays the size of a `Vec` (24 bytes, not 32) in
    /// every lease: a large lease is rare, a lease is not.
    #[allow(clippy::box_collection)]
    Many(Box<BTreeSet<LeaseMember>>),
}

impl Default for Members {
    fn default() -> Self {
        Members::Few(Vec::new())
    }
}

fn cmp_member(m: &LeaseMember, key: &ServiceKey, id: &str) -> Ordering {
    m.0.cmp(key).then_with(|| m.1.as_str().cmp(id))
}

impl LeaseMembers {
    /// No members.
    pub fn new() -> Self {
        LeaseMembers::default()
    }

    /// Number of instances attached.
    pub fn len(&self) -> usize {
        match &self.0 {
            Members::Few(v) => v.len(),
            Members::Many(s) => s.len(),
        }
    }

    /// Whether no instance is attached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether instance `id` of service `key` is attached.
    pub fn contains(&self, key: &ServiceKey, id: &str) -> bool {
        match &self.0 {
            Members::Few(v) => v.binary_search_by(|m| cmp_member(m, key, id)).is_ok(),
            Members::Many(s) => s.contains(&(key.clone(), CompactString::from(id))),
        }
    }

    /// The members, ordered by service and id.
    pub fn iter(&self) -> impl Iterator<Item = (&ServiceKey, &str)> {
        let (few, many) = match &self.0 {
            Members::Few(v) => (Some(v.iter()), None),
            Members::Many(s) => (None, Some(s.iter())),
        };
        few.into_iter()
            .flatten()
            .chain(many.into_iter().flatten())
            .map(|(k, id)| (k, id.as_str()))
    }

    /// Attaches an instance; false if it already was.
    pub(crate) fn insert(&mut self, member: LeaseMember) -> bool {
        match &mut self.0 {
            Members::Few(v) => match v.binary_search_by(|m| cmp_member(m, &member.0, &member.1)) {
                Ok(_) => false,
                Err(at) if v.len() < FEW_MEMBERS => {
                    // Grow one at a time: a vector's first allocation would
                    // otherwise hold four members, and most leases have one.
                    v.reserve_exact(1);
                    v.insert(at, member);
                    true
                }
                Err(_) => {
                    let mut set: BTreeSet<LeaseMember> = std::mem::take(v).into_iter().collect();
                    set.insert(member);
                    self.0 = Members::Many(Box::new(set));
                    true
                }
            },
            Members::Many(s) => s.insert(member),
        }
    }

    /// Detaches an instance; false if it was not attached.
    pub(crate) fn remove(&mut self, key: &ServiceKey, id: &str) -> bool {
        match &mut self.0 {
            Members::Few(v) => match v.binary_search_by(|m| cmp_member(m, key, id)) {
                Ok(at) => {
                    v.remove(at);
                    if v.is_empty() {
                        *v = Vec::new();
                    }
                    true
                }
                Err(_) => false,
            },
            Members::Many(s) => {
                let removed = s.remove(&(key.clone(), CompactString::from(id)));
                if s.len() <= FEW_MEMBERS / 2 {
                    self.0 = Members::Few(std::mem::take(&mut **s).into_iter().collect());
                }
                removed
            }
        }
    }
}

/// Equal when they hold the same members, however they are stored.
impl PartialEq for LeaseMembers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for LeaseMembers {}

impl fmt::Debug for LeaseMembers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<LeaseMember> for LeaseMembers {
    fn from_iter<I: IntoIterator<Item = LeaseMember>>(iter: I) -> Self {
        let mut out = LeaseMembers::new();
        for m in iter {
            out.insert(m);
        }
        out
    }
}
