//! The running configuration: the validated [`Config`] and the [`Routing`] built from it,
//! swapped as one unit on reload so a delivery never sees half of each.
//!
//! Owns the cell every task reads the running configuration from. Must not: build or
//! validate a configuration (that is `reload` and `providers`).

use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::providers::Routing;

#[derive(Debug)]
pub struct Live {
    pub config: Config,
    pub routing: Routing,
}

/// Holds the running [`Live`]. Readers take a snapshot that stays whole for as long as they
/// hold it; a reload replaces it for later readers.
#[derive(Debug)]
pub struct LiveCell(RwLock<Arc<Live>>);

impl LiveCell {
    pub fn new(live: Live) -> LiveCell {
        LiveCell(RwLock::new(Arc::new(live)))
    }

    /// The running configuration. A panic while the lock was held cannot leave a half-made
    /// value (the lock only guards an `Arc` swap), so a poisoned lock is read all the same.
    pub fn current(&self) -> Arc<Live> {
        match self.0.read() {
            Ok(l) => Arc::clone(&l),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    pub fn replace(&self, live: Live) {
        let new = Arc::new(live);
        match self.0.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
    }
}
