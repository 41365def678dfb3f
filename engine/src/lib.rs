//! riposte: an incident-response engine for container estates.

pub mod clock;
pub mod event;
pub mod formats;
pub mod script;
pub mod config;
pub mod duration;
pub mod playbook;
pub mod matcher;
pub mod state;
pub mod audit;
pub mod metrics;
pub mod runner;
pub mod bus;
pub mod embedded;
pub mod engine;
pub mod cli;
pub mod schema;
pub mod testing;
pub mod bench;
