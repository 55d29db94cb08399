//! Placeholder, replaced below.
use super::Policy;
use crate::cluster::{Cluster, Event, Millis};

pub struct Adaptive;
impl Adaptive {
    pub fn new(_t: Millis) -> Self {
        Adaptive
    }
}
impl Policy for Adaptive {
    fn name(&self) -> &'static str {
        "adaptive"
    }
    fn decide(&mut self, _c: &mut Cluster, _e: &Event, _n: Millis) {}
}
