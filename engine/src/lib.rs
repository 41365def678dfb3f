//! riposte: an incident-response engine for container estates.

pub mod audit;
pub mod bench;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod duration;
pub mod embedded;
pub mod engine;
pub mod event;
pub mod formats;
pub mod matcher;
pub mod metrics;
pub mod playbook;
pub mod runner;
pub mod schema;
pub mod script;
pub mod state;
pub mod testing;
