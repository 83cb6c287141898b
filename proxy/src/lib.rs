//! The Koukan proxy. Modules, from the bottom up (each uses only those
//! above it):
//!
//! - [`config`]: the config parsed into domain types (chains and their
//!   delivery, filters through a registry, listeners, endpoints, retries);
//! - [`queue`]: the store as the receiving side and the scheduler share it,
//!   and the one builder of stored transactions;
//! - [`delivery`]: the terminals (relay dispatcher, store writer, exploder,
//!   maildir) and the capabilities they are handed (`EndpointFactory`,
//!   `NewChain`);
//! - [`scheduler`]: delivers stored transactions through their output
//!   chain, retries, bounces;
//! - [`snapshot`] and [`process`]: one immutable config snapshot, and what
//!   outlives snapshots (queue, pools, resolver, metrics);
//! - [`rest`]: the REST API (an HTTP listener's routes, pending
//!   transactions, uploads, hanging GETs);
//! - [`listeners`], [`admin`], [`server`]: the wiring: listeners and their
//!   reload, the admin server, the process lifecycle.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod delivery;
pub mod listeners;
pub mod process;
pub mod queue;
pub mod rest;
pub mod scheduler;
pub mod server;
pub mod snapshot;
#[cfg(test)]
mod test_support;
