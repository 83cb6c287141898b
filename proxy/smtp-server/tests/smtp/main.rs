//! End-to-end tests: real sessions over TCP on 127.0.0.1 against a
//! recording chain. One test binary (faster to build than one per file).

mod common;
mod data;
mod listener;
mod panics;
mod session;
mod spans;
mod tls_auth;
