//! A worker's memory of the streams it decided on lately: each stream's state as of a
//! committed version, so the next command on it reads only the events after that version
//! instead of replaying the whole stream.
//!
//! Never stale in a way that matters: the log is append-only, so a state folded up to version
//! `v` stays true for `v` forever, and every load still asks the database for what came after
//! `v` (another replica may have appended) inside the command's own transaction. An entry is
//! written only after its transaction committed (see [`super::store::CommandTx::after_commit`]);
//! a rolled-back decision never reaches it.
//!
//! Bounded: two generations of at most `capacity` entries each. A hit in the old generation
//! moves to the new one; when the new one fills up, the old one is dropped. This keeps the
//! streams in use and forgets the rest, in O(1) per operation, without per-entry bookkeeping.

use std::collections::HashMap;
use std::sync::Mutex;

use eventline_events::values::StreamId;

pub struct StateCache<S> {
    capacity: usize,
    generations: Mutex<Generations<S>>,
}

struct Generations<S> {
    young: HashMap<StreamId, (S, i64)>,
    old: HashMap<StreamId, (S, i64)>,
}

impl<S: Clone> StateCache<S> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            generations: Mutex::new(Generations {
                young: HashMap::new(),
                old: HashMap::new(),
            }),
        }
    }

    /// The cached state of `stream_id` and the version it is folded up to, if any.
    pub fn get(&self, stream_id: &StreamId) -> Option<(S, i64)> {
        let mut generations = self.lock();
        if let Some(entry) = generations.young.get(stream_id) {
            super::metrics::state_cache_lookup(true);
            return Some(entry.clone());
        }
        let entry = generations.old.remove(stream_id);
        super::metrics::state_cache_lookup(entry.is_some());
        let entry = entry?;
        let copy = entry.clone();
        self.insert(&mut generations, stream_id.clone(), entry);
        Some(copy)
    }

    /// Remembers `state` as of committed `version`; an older version never replaces a newer one.
    pub fn put(&self, stream_id: StreamId, state: S, version: i64) {
        let mut generations = self.lock();
        let known = generations
            .young
            .get(&stream_id)
            .or_else(|| generations.old.get(&stream_id))
            .map(|(_, v)| *v);
        if known.is_some_and(|known| known >= version) {
            return;
        }
        generations.old.remove(&stream_id);
        self.insert(&mut generations, stream_id, (state, version));
    }

    fn insert(&self, generations: &mut Generations<S>, stream_id: StreamId, entry: (S, i64)) {
        if generations.young.len() >= self.capacity && !generations.young.contains_key(&stream_id) {
            generations.old = std::mem::take(&mut generations.young);
        }
        generations.young.insert(stream_id, entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<S>> {
        // A panic while holding the lock cannot leave a half-written entry (every write is
        // one insert or remove), so a poisoned lock is still a consistent cache.
        self.generations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let generations = self.lock();
        generations.young.len() + generations.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: usize) -> StreamId {
        StreamId::from_log(format!("product-{n}"))
    }

    #[test]
    fn remembers_the_newest_version_only() {
        let cache = StateCache::new(8);
        cache.put(stream(1), "v3", 3);
        cache.put(stream(1), "v2", 2);
        assert_eq!(cache.get(&stream(1)), Some(("v3", 3)));
        cache.put(stream(1), "v5", 5);
        assert_eq!(cache.get(&stream(1)), Some(("v5", 5)));
        assert_eq!(cache.get(&stream(2)), None);
    }

    #[test]
    fn stays_bounded_and_keeps_what_is_used() {
        let cache = StateCache::new(4);
        for n in 0..100 {
            cache.put(stream(n), n, 1);
            // Stream 0 is used all the time: it must survive every generation change.
            assert_eq!(cache.get(&stream(0)), Some((0, 1)), "after {n} puts");
            assert!(cache.len() <= 8, "{} entries after {n} puts", cache.len());
        }
        assert_eq!(cache.get(&stream(1)), None, "long unused, so forgotten");
    }
}
