//! Arbitrary bytes as everything an SMTP client sends: the session must
//! answer, never panic, never hang, and end when the input does.
//!
//! Run with `cargo +nightly fuzz run smtp_session` from `proxy/smtp-server`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = koukan_smtp_server::fuzzing::run_session(data);
    // Every session starts with the greeting and writes whole reply lines.
    assert!(out.starts_with(b"220 "));
    assert!(out.ends_with(b"\r\n"));
});
