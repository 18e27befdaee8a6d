//! Control plane: config, compile() into routing tables, and the frame replay behind `lb sim`.
#![deny(unsafe_code)]

pub mod api;
pub mod compile;
pub mod config;
pub mod control;
pub mod diag;
pub mod health;
pub mod sim;
pub mod sources;
#[allow(unsafe_code)]
pub mod sys;

pub use compile::{compile, CompileError, Compiled};
pub use config::{load, Config};
pub use diag::{ConfigReport, Problem};
