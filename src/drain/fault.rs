//! A fault-injecting [`ObjectStore`](super::store::ObjectStore) wrapper for drain tests.
