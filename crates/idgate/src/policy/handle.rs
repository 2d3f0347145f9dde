//! A policy that can be reloaded while requests are being decided.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};

use super::error::PolicyErrors;
use super::index::Policy;
use super::{Decision, PolicySources, RequestContext};
use crate::identity::Identity;

/// The current [`Policy`] and the sources it was loaded from.
///
/// Readers take the current policy without locking ([`PolicyHandle::current`]);
/// [`PolicyHandle::reload`] re-reads the sources and swaps the new policy in
/// atomically, only when it is valid. A request already being decided
/// finishes with the policy it started with.
pub struct PolicyHandle {
    sources: PolicySources,
    current: ArcSwap<Policy>,
    generation: AtomicU64,
    /// Serialises reloads, so that generations count swaps in the order the
    /// files were read and a slow reload cannot overwrite a newer one.
    reloading: Mutex<()>,
}

impl PolicyHandle {
    /// Loads the policy from `sources`. Returns the handle and the load's
    /// warnings (deleted members, groups nobody is in, …) for the caller
    /// to log.
    pub fn new(sources: PolicySources) -> Result<(PolicyHandle, Vec<String>), PolicyErrors> {
        let loaded = Policy::load(&sources)?;
        let handle = PolicyHandle {
            sources,
            current: ArcSwap::from_pointee(loaded.policy),
            generation: AtomicU64::new(1),
            reloading: Mutex::new(()),
        };
        Ok((handle, loaded.warnings))
    }

    /// The current policy. Cheap (no lock, no reference count change in
    /// the common case); hold it only while deciding, as it keeps an old
    /// policy alive across a reload.
    pub fn current(&self) -> Guard<Arc<Policy>> {
        self.current.load()
    }

    /// The current policy as an `Arc`, to keep for longer.
    pub fn snapshot(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// Decides with the current policy.
    pub fn decide(&self, identity: Option<&Identity>, ctx: &RequestContext<'_>) -> Decision {
        self.current.load().decide(identity, ctx)
    }

    /// Re-reads the same sources. A valid policy replaces the current one
    /// and its warnings are returned; an invalid one is refused with every
    /// problem, and the current policy stays.
    ///
    /// This reads files: from async code, call it on a blocking thread.
    pub fn reload(&self) -> Result<Vec<String>, PolicyErrors> {
        let _serial = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = Policy::load(&self.sources)?;
        self.current.store(Arc::new(loaded.policy));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(loaded.warnings)
    }

    /// The sources the policy is loaded from.
    pub fn sources(&self) -> &PolicySources {
        &self.sources
    }

    /// How many policies this handle has held: 1 after [`PolicyHandle::new`],
    /// one more for each successful reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyHandle")
            .field("sources", &self.sources)
            .field("generation", &self.generation())
            .field("current", &*self.current.load())
            .finish()
    }
}
