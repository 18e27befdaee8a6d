//! Control plane: config, compile() into routing tables.
#![forbid(unsafe_code)]
