//! Integration tests: one binary, real servers on 127.0.0.1:0 with generated PKIs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic fails the test or benchmark

mod support;

mod bad_input;
mod cli;
mod cluster;
mod deploy;
mod failover;
mod federation;
mod flags;
mod hostile;
mod identity;
mod limits;
mod metrics;
mod operator;
mod streams;
