//! Control plane: config, compile() into routing tables, and the frame replay behind `lb sim`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod compile;
pub mod config;
pub mod lab;
pub mod metrics;
pub mod sim;
pub mod state;

pub use compile::{compile, CompileError, Compiled};
pub use config::{load, Config, ConfigError};
