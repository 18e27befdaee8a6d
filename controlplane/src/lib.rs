//! Control plane: config, compile() into routing tables, and the frame replay behind `lb sim`.
#![forbid(unsafe_code)]

pub mod api;
pub mod compile;
pub mod config;
pub mod diag;
pub mod health;
pub mod reload;
pub mod sim;
pub mod state;

pub use compile::{compile, CompileError, Compiled};
pub use config::{load, Config, ConfigError};
pub use diag::{ConfigReport, Problem};
