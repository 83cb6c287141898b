//! Integration tests of koukan-message, one binary.

mod common;

mod builder;
mod encodings;
mod parser;
mod roundtrip;
mod spec_errors;
mod streaming;
