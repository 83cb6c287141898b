//! Koukan's protobuf schema and the generated Rust types.
//!
//! * [`config::v1`]: the configuration resources (bootstrap file, and what
//!   a control plane pushes), with serde impls following the protobuf JSON
//!   mapping.
//! * [`load`]: reading, parsing and validating a YAML bootstrap file.
#![forbid(unsafe_code)]

pub mod load;

/// Configuration resources, package `koukan.config.v1`.
pub mod config {
    /// Generated from `proto/koukan/config/v1/config.proto`; see the comments
    /// there for the meaning of every field.
    #[allow(
        clippy::all,
        clippy::pedantic,
        missing_docs,
        rustdoc::bare_urls,
        rustdoc::broken_intra_doc_links,
        rustdoc::invalid_html_tags
    )]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/koukan.config.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/koukan.config.v1.serde.rs"));
    }
}
