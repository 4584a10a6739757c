//! The running configuration: the validated [`Config`] and the [`Routing`] built from it,
//! swapped as one unit on reload so a delivery never sees half of each.

use crate::config::Config;
use crate::providers::Routing;

#[derive(Debug)]
pub struct Live {
    pub config: Config,
    pub routing: Routing,
}
