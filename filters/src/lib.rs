//! The filters that transform a transaction: each one a tower `Layer` over
//! the chain types of `koukan-chain`. No sockets live in this crate: what a
//! filter needs from outside (DNS, a spooled body) comes in as a handle.
#![forbid(unsafe_code)]

pub mod message_parse;
pub mod received_header;
pub mod router;
