//! Access to environment variables through a trait, so tests pass a map
//! instead of touching the process environment (which is shared by every
//! test thread).

use std::collections::{BTreeMap, HashMap};

/// A source of environment variables.
pub trait Env {
    /// The value of `key`, if set and valid UTF-8.
    fn var(&self, key: &str) -> Option<String>;

    /// Every variable name, when the source can list them. Used only to warn
    /// about misspelt `IDGATE_*` names; the default lists nothing.
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }

    fn names(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

impl Env for [(&str, &str)] {
    fn var(&self, key: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
    }
    fn names(&self) -> Vec<String> {
        self.iter().map(|(k, _)| (*k).to_owned()).collect()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, key: &str) -> Option<String> {
        self.as_slice().var(key)
    }
    fn names(&self) -> Vec<String> {
        self.as_slice().names()
    }
}
