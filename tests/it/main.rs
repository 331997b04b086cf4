//! Integration tests: one binary, real servers on 127.0.0.1:0 with generated PKIs.

mod support;

mod bad_input;
mod cli;
mod federation;
mod flags;
mod identity;
mod operator;
mod streams;
