//! The Koukan proxy: listeners, endpoints, the running configuration and
//! its reload path, and the admin server.
#![forbid(unsafe_code)]

pub mod admin;
pub mod chains;
pub mod endpoints;
pub mod listeners;
pub mod message_parse;
pub mod runtime;
pub mod scheduler;
pub mod server;
#[cfg(test)]
mod test_support;
