//! The transaction model and the filter chain, shared by every listener,
//! terminal and filter.
//!
//! A transaction travels through its chain as a sequence of [`TxUpdate`]s
//! (MAIL, a batch of RCPTs, body chunks). Each update returns the responses
//! for exactly what it carried ([`UpdateResponse`]), which is what lets an
//! upstream's final answer reach the client while it waits (cut-through) and
//! lets a PIPELINING batch travel as one update.
//!
//! A chain is a tower stack built per transaction: filters are `Layer`s and
//! the terminal (SMTP client, maildir, the exploder, the store writer) is a
//! `Service<TxUpdate>`. A listener asks a [`TransactionFactory`] for the
//! stack of each new transaction. No sockets live in this crate, and no
//! filter: those are in `koukan-filters`, which the SMTP crates do not
//! depend on.
//!
//! Each transaction's [`TxContext`] says where it came from ([`Ingress`]:
//! an SMTP session, an HTTP request, or a replay from the store with the
//! original facts), carries the typed [`Signals`] filters attach for later
//! filters and the stored record, and the spools of whole-message filters
//! ([`body`]), which read the whole message from a file, not memory.
#![forbid(unsafe_code)]

pub mod body;
pub mod chain;
pub mod signals;
pub mod transaction;

pub use chain::{
    BoxTxService, ChainPanicked, Split, Terminal, TerminalService, TransactionFactory, TxService,
    boxed, call_caught,
};
pub use signals::{Signal, SignalError, Signals};
pub use transaction::{
    BodyChunk, Destination, EsmtpParam, HostPort, Hosts, HttpInfo, Ingress, Mailbox, Recipient,
    ReplyClass, Response, SessionInfo, StoredInfo, TlsInfo, TxContext, TxUpdate, UpdateResponse,
};
