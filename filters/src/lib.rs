//! The transaction model and the filter chain.
//!
//! A transaction travels through its chain as a sequence of [`TxUpdate`]s
//! (MAIL, a batch of RCPTs, body chunks). Each update returns the responses
//! for exactly what it carried ([`UpdateResponse`]), which is what lets an
//! upstream's final answer reach the client while it waits (cut-through) and
//! lets a PIPELINING batch travel as one update.
//!
//! A chain is a tower stack built per transaction: filters are `Layer`s and
//! the terminal (SMTP client, maildir, later the exploder and the store) is a
//! `Service<TxUpdate>`. No sockets live in this crate.
#![forbid(unsafe_code)]

pub mod chain;
pub mod received_header;
pub mod router;
pub mod transaction;

pub use chain::{
    BoxTxService, ChainPanicked, Terminal, TerminalService, TxService, boxed, call_caught,
};
pub use transaction::{
    BodyChunk, Destination, EsmtpParam, HostPort, Hosts, Mailbox, Recipient, Response, SessionInfo,
    TlsInfo, TxContext, TxUpdate, UpdateResponse,
};
