//! Sans-IO core of redis-proxy.
#![forbid(unsafe_code)]

pub mod command;
