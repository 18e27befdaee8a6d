//! Test support kept out of the production libraries: sample routing tables and frames (benchmarks,
//! fuzzing, tests), network namespace helpers, and the lab of namespaces behind `lb lab` and the
//! end-to-end tests.
#![forbid(unsafe_code)]

pub mod sample;
