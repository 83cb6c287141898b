//! Typed results filters attach to a transaction (an SPF verdict, a DKIM
//! result, the defects of a parse, a policy decision) for later filters to
//! read and for the stored record to keep.
//!
//! A signal is a plain type implementing [`Signal`]: a later filter reads
//! it back as that type (`ctx.signals.get::<T>()`), with no stringly-typed
//! lookup; what leaves the process (the stored transaction, the admin API)
//! is its JSON under its stable [`Signal::NAME`].
//!
//! The map sits in the shared, immutable [`crate::TxContext`], hence the
//! interior mutability. Updates of one transaction are sequential, so the
//! lock is never contended; it is a lock rather than a cell only because
//! the exploder runs several upstream stacks of one transaction at once.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// A typed result a filter attaches to the transaction.
pub trait Signal: Send + Sync + 'static {
    /// The key of its JSON in the stored record and the admin API: stable
    /// across releases (records outlive the process that wrote them), and
    /// unique among the signal types of a build.
    const NAME: &'static str;

    /// What the stored record keeps.
    fn to_json(&self) -> serde_json::Value;
}

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Two signal types share a name: their JSON would overwrite each
    /// other in the stored record.
    #[error("signal name {name:?} belongs to {existing}, not {attempted}")]
    NameTaken {
        name: &'static str,
        existing: &'static str,
        attempted: &'static str,
    },
}

type AnySignal = dyn Any + Send + Sync;

struct Entry {
    value: Arc<AnySignal>,
    type_name: &'static str,
    /// `T::to_json` of the erased value.
    json: fn(&AnySignal) -> serde_json::Value,
}

fn json_of<T: Signal>(v: &AnySignal) -> serde_json::Value {
    v.downcast_ref::<T>()
        .map_or(serde_json::Value::Null, Signal::to_json)
}

/// The signals of one transaction, at most one value per type.
#[derive(Default)]
pub struct Signals {
    // Keyed by name rather than `TypeId`: the name is what must be unique
    // (it is the stored key), and a lookup by type checks the type anyway.
    entries: Mutex<BTreeMap<&'static str, Entry>>,
}

impl Signals {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Entry>> {
        // A panic elsewhere while holding the lock left the map whole
        // (every update is one insert), so poisoning is ignored.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Attaches `value`, replacing (and returning) the previous value of
    /// its type.
    pub fn insert<T: Signal>(&self, value: T) -> Result<Option<Arc<T>>, SignalError> {
        let mut entries = self.lock();
        if let Some(e) = entries.get(T::NAME)
            && !e.value.is::<T>()
        {
            return Err(SignalError::NameTaken {
                name: T::NAME,
                existing: e.type_name,
                attempted: std::any::type_name::<T>(),
            });
        }
        let previous = entries.insert(
            T::NAME,
            Entry {
                value: Arc::new(value),
                type_name: std::any::type_name::<T>(),
                json: json_of::<T>,
            },
        );
        Ok(previous.and_then(|e| e.value.downcast::<T>().ok()))
    }

    /// The value of type `T`, if a filter attached one.
    pub fn get<T: Signal>(&self) -> Option<Arc<T>> {
        let value = self.lock().get(T::NAME)?.value.clone();
        value.downcast::<T>().ok()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every signal's JSON by name: what the stored record keeps.
    pub fn to_json(&self) -> BTreeMap<String, serde_json::Value> {
        // Serialized outside the lock: `to_json` is a filter's code and may
        // itself look at the signals.
        let erased: Vec<_> = self
            .lock()
            .iter()
            .map(|(name, e)| (*name, e.value.clone(), e.json))
            .collect();
        erased
            .into_iter()
            .map(|(name, value, json)| (name.to_owned(), json(&*value)))
            .collect()
    }
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.lock().keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq)]
    struct Spf {
        result: &'static str,
    }

    impl Signal for Spf {
        const NAME: &'static str = "spf";
        fn to_json(&self) -> serde_json::Value {
            json!({ "result": self.result })
        }
    }

    #[derive(Debug, PartialEq)]
    struct Score(u32);

    impl Signal for Score {
        const NAME: &'static str = "score";
        fn to_json(&self) -> serde_json::Value {
            json!(self.0)
        }
    }

    /// Another type under `spf`'s name.
    #[derive(Debug)]
    struct FakeSpf;

    impl Signal for FakeSpf {
        const NAME: &'static str = "spf";
        fn to_json(&self) -> serde_json::Value {
            json!("fake")
        }
    }

    #[test]
    fn typed_get_after_insert() {
        let s = Signals::default();
        assert!(s.is_empty());
        assert!(s.get::<Spf>().is_none());
        assert!(s.insert(Spf { result: "pass" }).unwrap().is_none());
        s.insert(Score(7)).unwrap();
        assert_eq!(*s.get::<Spf>().unwrap(), Spf { result: "pass" });
        assert_eq!(*s.get::<Score>().unwrap(), Score(7));
        // Replacing returns the old value.
        let old = s.insert(Score(9)).unwrap().unwrap();
        assert_eq!(*old, Score(7));
        assert_eq!(*s.get::<Score>().unwrap(), Score(9));
        assert_eq!(format!("{s:?}"), r#"{"score", "spf"}"#);
    }

    #[test]
    fn json_by_name() {
        let s = Signals::default();
        s.insert(Spf { result: "fail" }).unwrap();
        s.insert(Score(3)).unwrap();
        let j = s.to_json();
        assert_eq!(j.len(), 2);
        assert_eq!(j["spf"], json!({"result": "fail"}));
        assert_eq!(j["score"], json!(3));
    }

    #[test]
    fn a_name_belongs_to_one_type() {
        let s = Signals::default();
        s.insert(Spf { result: "pass" }).unwrap();
        let err = s.insert(FakeSpf).unwrap_err();
        assert!(
            matches!(err, SignalError::NameTaken { name: "spf", .. }),
            "{err}"
        );
        // The first stays, and the other type finds nothing.
        assert!(s.get::<FakeSpf>().is_none());
        assert_eq!(s.get::<Spf>().unwrap().result, "pass");
        assert_eq!(s.to_json()["spf"], json!({"result": "pass"}));
    }
}
