//! Compact, shared representations of an instance's strings.
//!
//! A registry holds up to millions of instances whose strings mostly repeat:
//! every instance of a service names the same namespace and service, and
//! tags, metadata keys, versions and zones come from a small vocabulary. So
//! an [`Instance`](crate::Instance) is built from:
//!
//! - [`SharedStr`]: an immutable reference-counted string behind one thin
//!   (8-byte) pointer. Made by [`SharedStr::interned`] (and by
//!   `Deserialize`) it goes through a process-wide interner, so equal
//!   strings share one allocation.
//! - [`CompactString`] (re-exported from `compact_str`): a string of up to
//!   24 bytes stored inline, with no allocation; for the strings that are
//!   unique to an instance (id, address, lease, metadata values).
//! - [`Tags`]: a sorted, duplicate-free set of tags. Whole sets are interned
//!   as well, so instances with the same tags share one allocation.
//! - [`Meta`]: metadata entries sorted by key, in one allocation.
//!
//! Each serialises exactly as the `String`, `BTreeSet<String>` or
//! `BTreeMap<String, String>` it stands for, so the JSON does not change.
//!
//! The interner is bounded: strings longer than [`MAX_INTERNED_LEN`] bytes
//! are never interned, and entries nobody else holds any more are dropped
//! whenever the set has doubled since the last prune, so a stream of unique
//! strings cannot make it grow without limit.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::{Deref, Index};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use arcstr::ArcStr;
pub use compact_str::CompactString;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest string the interner keeps, in bytes. Longer strings are rare and
/// mostly unique; they get an allocation of their own.
pub const MAX_INTERNED_LEN: usize = 64;

/// The interner never prunes below this many entries.
const MIN_PRUNE_AT: usize = 1024;

/// A set of shared values; an entry only the set itself holds is garbage.
struct Interner<K> {
    set: HashSet<K>,
    /// Prune when the set reaches this size.
    prune_at: usize,
}

impl<K: Eq + Hash + Clone> Interner<K> {
    fn new() -> Self {
        Interner {
            set: HashSet::new(),
            prune_at: MIN_PRUNE_AT,
        }
    }

    /// The shared value equal to `q`, made by `make` if there is none.
    /// `unshared` tells whether only the set holds an entry.
    fn intern<Q>(&mut self, q: &Q, make: impl FnOnce(&Q) -> K, unshared: fn(&K) -> bool) -> K
    where
        K: Borrow<Q>,
        Q: ?Sized + Eq + Hash,
    {
        if let Some(k) = self.set.get(q) {
            return k.clone();
        }
        if self.set.len() >= self.prune_at {
            // Amortised O(1): the set has at least doubled since the last
            // prune, so this pass is paid for by the insertions since.
            self.set.retain(|k| !unshared(k));
            self.prune_at = (2 * self.set.len()).max(MIN_PRUNE_AT);
            if self.set.capacity() > 2 * self.prune_at {
                self.set.shrink_to(self.prune_at);
            }
        }
        let k = make(q);
        self.set.insert(k.clone());
        k
    }
}

static STRINGS: LazyLock<Mutex<Interner<SharedStr>>> =
    LazyLock::new(|| Mutex::new(Interner::new()));
static TAG_SETS: LazyLock<Mutex<Interner<TagSet>>> = LazyLock::new(|| Mutex::new(Interner::new()));

/// The interner stays consistent whatever a panicking holder did: it only
/// ever inserts or removes whole entries.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn intern_locked(strings: &mut Interner<SharedStr>, s: &str) -> SharedStr {
    if s.len() > MAX_INTERNED_LEN {
        return SharedStr::new(s);
    }
    strings.intern(s, SharedStr::new, |k| ArcStr::strong_count(&k.0) == Some(1))
}

/// An immutable, cheaply cloned string behind one thin pointer (8 bytes,
/// and `Option<SharedStr>` too). Compares, orders and hashes as its text.
///
/// [`SharedStr::interned`] and `Deserialize` share equal strings through a
/// process-wide interner; [`SharedStr::new`] and the `From` conversions
/// always allocate a string of their own (no lock taken).
#[derive(Clone, Default)]
pub struct SharedStr(ArcStr);

impl SharedStr {
    /// A string of its own, not interned.
    pub fn new(s: &str) -> Self {
        SharedStr(ArcStr::from(s))
    }

    /// The interned string equal to `s` (a string of its own when longer
    /// than [`MAX_INTERNED_LEN`]).
    pub fn interned(s: &str) -> Self {
        if s.len() > MAX_INTERNED_LEN {
            return SharedStr::new(s);
        }
        intern_locked(&mut lock(&STRINGS), s)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both are the same allocation (not merely equal).
    pub fn ptr_eq(a: &SharedStr, b: &SharedStr) -> bool {
        ArcStr::ptr_eq(&a.0, &b.0)
    }
}

impl Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for SharedStr {
    fn eq(&self, other: &Self) -> bool {
        SharedStr::ptr_eq(self, other) || self.as_str() == other.as_str()
    }
}

impl Eq for SharedStr {}

impl PartialOrd for SharedStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SharedStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for SharedStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

macro_rules! str_eq {
    ($($t:ty),*) => {$(
        impl PartialEq<$t> for SharedStr {
            fn eq(&self, other: &$t) -> bool {
                self.as_str() == AsRef::<str>::as_ref(other)
            }
        }
        impl PartialEq<SharedStr> for $t {
            fn eq(&self, other: &SharedStr) -> bool {
                AsRef::<str>::as_ref(self) == other.as_str()
            }
        }
    )*};
}
str_eq!(str, &str, String);

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr::new(s)
    }
}

impl From<&String> for SharedStr {
    fn from(s: &String) -> Self {
        SharedStr::new(s)
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        SharedStr(ArcStr::from(s))
    }
}

impl From<SharedStr> for String {
    fn from(s: SharedStr) -> Self {
        s.as_str().to_string()
    }
}

impl Serialize for SharedStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SharedStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SharedStr, E> {
                Ok(SharedStr::interned(v))
            }
        }
        d.deserialize_str(V)
    }
}

/// An interned tag set: the sorted, duplicate-free tags behind one thin
/// pointer, hashed and compared as the slice.
#[derive(Clone)]
struct TagSet(Arc<Box<[SharedStr]>>);

impl Borrow<[SharedStr]> for TagSet {
    fn borrow(&self) -> &[SharedStr] {
        &self.0
    }
}

impl PartialEq for TagSet {
    fn eq(&self, other: &Self) -> bool {
        self.0[..] == other.0[..]
    }
}

impl Eq for TagSet {}

impl Hash for TagSet {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0[..].hash(state)
    }
}

/// The tags of an instance: sorted, without duplicates, serialised as a
/// JSON array of strings. Tag strings and whole sets are interned, so
/// instances with the same tags share one allocation; an empty set
/// allocates nothing. Build one with `collect()` from any strings.
#[derive(Clone, Default)]
pub struct Tags(Option<TagSet>);

impl Tags {
    /// No tags.
    pub fn new() -> Self {
        Tags(None)
    }

    /// The tags, sorted.
    pub fn as_slice(&self) -> &[SharedStr] {
        match &self.0 {
            Some(set) => &set.0,
            None => &[],
        }
    }

    /// The tags, sorted.
    pub fn iter(&self) -> std::slice::Iter<'_, SharedStr> {
        self.as_slice().iter()
    }

    /// Number of tags.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are no tags.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Whether `tag` is one of the tags.
    pub fn contains(&self, tag: &str) -> bool {
        self.as_slice()
            .binary_search_by(|t| t.as_str().cmp(tag))
            .is_ok()
    }

    /// Whether both are the same allocation (two empty sets are).
    pub fn ptr_eq(a: &Tags, b: &Tags) -> bool {
        match (&a.0, &b.0) {
            (Some(x), Some(y)) => Arc::ptr_eq(&x.0, &y.0),
            (None, None) => true,
            _ => false,
        }
    }

    /// Interns sorted, distinct strings as a set.
    fn from_sorted<S: AsRef<str>>(sorted: &[S]) -> Self {
        if sorted.is_empty() {
            return Tags(None);
        }
        let tags: Box<[SharedStr]> = {
            let mut strings = lock(&STRINGS);
            sorted
                .iter()
                .map(|s| intern_locked(&mut strings, s.as_ref()))
                .collect()
        };
        let set = lock(&TAG_SETS).intern(
            &tags[..],
            |_| TagSet(Arc::new(tags.clone())),
            |k| Arc::strong_count(&k.0) == 1,
        );
        Tags(Some(set))
    }
}

impl<S: AsRef<str>> FromIterator<S> for Tags {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut v: Vec<S> = iter.into_iter().collect();
        v.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
        v.dedup_by(|a, b| a.as_ref() == b.as_ref());
        Tags::from_sorted(&v)
    }
}

impl<'a> IntoIterator for &'a Tags {
    type Item = &'a SharedStr;
    type IntoIter = std::slice::Iter<'a, SharedStr>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl PartialEq for Tags {
    fn eq(&self, other: &Self) -> bool {
        Tags::ptr_eq(self, other) || self.as_slice() == other.as_slice()
    }
}

impl Eq for Tags {}

impl Hash for Tags {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for Tags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tags;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tags, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(s) = seq.next_element::<CompactString>()? {
                    v.push(s);
                }
                Ok(v.into_iter().collect())
            }
        }
        d.deserialize_seq(V)
    }
}

/// The metadata of an instance: string entries sorted by key, with unique
/// keys, serialised as a JSON object. Keys are interned; values of up to 24
/// bytes are stored inline. Build one with `collect()` from pairs of any
/// strings (a later duplicate key wins, as in a map).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Meta(Box<[(SharedStr, CompactString)]>);

impl Meta {
    /// No entries.
    pub fn new() -> Self {
        Meta::default()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&CompactString> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The entries, sorted by key.
    pub fn iter(&self) -> MetaIter<'_> {
        MetaIter(self.0.iter())
    }

    /// The entries as stored, sorted by key.
    pub fn entries(&self) -> &[(SharedStr, CompactString)] {
        &self.0
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Iterator over metadata entries as `(key, value)`, sorted by key.
#[derive(Clone, Debug)]
pub struct MetaIter<'a>(std::slice::Iter<'a, (SharedStr, CompactString)>);

impl<'a> Iterator for MetaIter<'a> {
    type Item = (&'a SharedStr, &'a CompactString);
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k, v))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for MetaIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|(k, v)| (k, v))
    }
}

impl ExactSizeIterator for MetaIter<'_> {}

impl<'a> IntoIterator for &'a Meta {
    type Item = (&'a SharedStr, &'a CompactString);
    type IntoIter = MetaIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Index<&str> for Meta {
    type Output = CompactString;
    /// The value of `key`; panics when there is none.
    fn index(&self, key: &str) -> &CompactString {
        self.get(key)
            .unwrap_or_else(|| panic!("no meta entry {key:?}"))
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Meta {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut v: Vec<(K, V)> = iter.into_iter().collect();
        // Stable, so among equal keys the last given comes last and wins.
        v.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let mut out: Vec<(SharedStr, CompactString)> = Vec::with_capacity(v.len());
        let mut strings = lock(&STRINGS);
        for (k, val) in &v {
            match out.last_mut() {
                Some(last) if last.0.as_str() == k.as_ref() => last.1 = val.as_ref().into(),
                _ => out.push((intern_locked(&mut strings, k.as_ref()), val.as_ref().into())),
            }
        }
        Meta(out.into_boxed_slice())
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Meta {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Meta;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Meta, A::Error> {
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = map.next_entry::<CompactString, CompactString>()? {
                    v.push(entry);
                }
                Ok(v.into_iter().collect())
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn interned_strings() -> usize {
        lock(&STRINGS).set.len()
    }

    fn interned_tag_sets() -> usize {
        lock(&TAG_SETS).set.len()
    }

    #[test]
    fn sizes_stay_small() {
        use std::mem::size_of;
        assert_eq!(size_of::<SharedStr>(), 8);
        assert_eq!(size_of::<Option<SharedStr>>(), 8);
        assert_eq!(size_of::<Tags>(), 8);
        assert_eq!(size_of::<Meta>(), 16);
        assert_eq!(size_of::<CompactString>(), 24);
        assert_eq!(size_of::<Option<CompactString>>(), 24);
    }

    #[test]
    fn equal_strings_share_one_allocation() {
        let a = SharedStr::interned("compact-test-shared");
        let b: SharedStr = serde_json::from_str(r#""compact-test-shared""#).unwrap();
        assert!(SharedStr::ptr_eq(&a, &b));
        // Made with `new`, a string is its own.
        let c = SharedStr::new("compact-test-shared");
        assert_eq!(a, c);
        assert!(!SharedStr::ptr_eq(&a, &c));
        // Too long to intern.
        let long = "x".repeat(MAX_INTERNED_LEN + 1);
        assert!(!SharedStr::ptr_eq(
            &SharedStr::interned(&long),
            &SharedStr::interned(&long)
        ));
    }

    #[test]
    fn equal_tag_sets_share_one_allocation() {
        let a: Tags = ["v2", "compact-test-prod", "v2"].into_iter().collect();
        let b: Tags = serde_json::from_str(r#"["compact-test-prod","v2"]"#).unwrap();
        assert!(Tags::ptr_eq(&a, &b));
        assert!(SharedStr::ptr_eq(&a.as_slice()[0], &b.as_slice()[0]));
        // A tag shared between different sets is still one string.
        let c: Tags = ["compact-test-prod", "v3"].into_iter().collect();
        assert!(!Tags::ptr_eq(&a, &c));
        assert!(SharedStr::ptr_eq(&a.as_slice()[0], &c.as_slice()[0]));
        let m: Meta = [("compact-test-prod", "x")].into_iter().collect();
        assert!(SharedStr::ptr_eq(&a.as_slice()[0], &m.entries()[0].0));
    }

    #[test]
    fn unique_strings_do_not_accumulate() {
        // Every string below is dropped right after it is interned: however
        // many there are, the interner stays near its pruning floor (other
        // tests run alongside, so allow for what they hold).
        for i in 0..50_000 {
            let s = SharedStr::interned(&format!("compact-test-unique-{i}"));
            assert_eq!(s.as_str(), format!("compact-test-unique-{i}"));
        }
        assert!(
            interned_strings() <= 4 * MIN_PRUNE_AT,
            "{}",
            interned_strings()
        );
        for i in 0..50_000 {
            let t: Tags = [format!("compact-test-set-{i}")].into_iter().collect();
            assert_eq!(t.len(), 1);
        }
        assert!(
            interned_tag_sets() <= 4 * MIN_PRUNE_AT,
            "{}",
            interned_tag_sets()
        );
        assert!(
            interned_strings() <= 4 * MIN_PRUNE_AT,
            "{}",
            interned_strings()
        );

        // What is still held survives pruning and stays shared.
        let kept: Vec<SharedStr> = (0..3 * MIN_PRUNE_AT)
            .map(|i| SharedStr::interned(&format!("compact-test-kept-{i}")))
            .collect();
        for i in 0..50_000 {
            SharedStr::interned(&format!("compact-test-churn-{i}"));
        }
        for (i, k) in kept.iter().enumerate() {
            let again = SharedStr::interned(&format!("compact-test-kept-{i}"));
            assert!(SharedStr::ptr_eq(k, &again));
        }
        assert!(interned_strings() <= 4 * kept.len() + 4 * MIN_PRUNE_AT);
    }

    #[test]
    fn tags_serialise_as_a_sorted_set() {
        let t: Tags = ["b", "a", "b", "c"].into_iter().collect();
        let set: BTreeSet<String> = ["b", "a", "c"].into_iter().map(String::from).collect();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            serde_json::to_string(&set).unwrap()
        );
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"["a","b","c"]"#);
        let back: Tags = serde_json::from_str(r#"["c","a","c","b"]"#).unwrap();
        assert_eq!(back, t);
        assert!(t.contains("a") && t.contains("c") && !t.contains("d"));
        assert_eq!(
            t.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(format!("{t:?}"), format!("{set:?}"));
        let empty: Tags = serde_json::from_str("[]").unwrap();
        assert!(empty.is_empty() && empty == Tags::new());
        assert_eq!(serde_json::to_string(&empty).unwrap(), "[]");
        assert!(serde_json::from_str::<Tags>(r#"[1]"#).is_err());
    }

    #[test]
    fn meta_serialises_as_a_map() {
        let m: Meta = [("team", "pay"), ("a", "1"), ("team", "core")]
            .into_iter()
            .collect();
        let map: BTreeMap<&str, &str> = [("team", "pay"), ("a", "1"), ("team", "core")]
            .into_iter()
            .collect();
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        assert_eq!(m.get("team").map(|v| v.as_str()), Some("core"));
        assert_eq!(m["a"], "1");
        assert_eq!(m.get("b"), None);
        assert_eq!(m.len(), 2);
        assert_eq!(format!("{m:?}"), format!("{map:?}"));
        // A duplicate key in JSON: the last wins, as with a BTreeMap.
        let json = r#"{"z":"1","k":"a","k":"b"}"#;
        let back: Meta = serde_json::from_str(json).unwrap();
        let want: BTreeMap<String, String> = serde_json::from_str(json).unwrap();
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&want).unwrap()
        );
        let long = "v".repeat(600);
        let m: Meta = [("k", long.as_str())].into_iter().collect();
        assert_eq!(m.get("k").unwrap(), &long);
    }
}
