//! `profile`: what a model costs on each device class, from exact static
//! accounting (shared with the quantize planner), measurement on this host
//! with the engine, and a stated roofline projection onto each target.

pub mod accounting;
pub mod graph;
pub mod measure;
pub mod plot;
pub mod project;
