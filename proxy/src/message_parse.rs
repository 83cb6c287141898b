//! The `message_parse` filter's wiring: its config from the bootstrap and
//! its layer in a transaction's stack. Kept in this one file (a filter's
//! parse and build) so that it moves as a unit.

use std::path::Path;
use std::sync::Arc;

use koukan_chain::body::SpoolOptions;
use koukan_chain::{BoxTxService, Response, TxContext};
use koukan_filters::message_parse::{DEFAULT_MAX_HEADER_BYTES, MessageParseConfig, layer};
use koukan_proto::config::v1 as pb;
use tower::Layer;

/// The filter's config; `config_file` anchors a relative `spool_dir`
/// (validation has checked the directory and the reply code).
pub fn config(config_file: &Path, m: &pb::MessageParseFilter) -> MessageParseConfig {
    MessageParseConfig {
        max_header_bytes: match m.max_header_bytes {
            0 => DEFAULT_MAX_HEADER_BYTES,
            n => n as usize,
        },
        reject: m.reject.as_ref().map(|r| {
            let code = r.code as u16;
            let text = match (r.text.as_str(), code / 100) {
                ("", 4) => "4.6.0 message header malformed, try again later",
                ("", _) => "5.6.0 message header malformed",
                (t, _) => t,
            };
            Response::new(code, text)
        }),
        spool: SpoolOptions {
            dir: (!m.spool_dir.is_empty())
                .then(|| koukan_proto::load::resolve_path(config_file, &m.spool_dir)),
        },
    }
}

/// The filter over `inner`, for the transaction `ctx`.
pub fn build(
    config: &Arc<MessageParseConfig>,
    ctx: &Arc<TxContext>,
    inner: BoxTxService,
) -> BoxTxService {
    koukan_chain::boxed(layer(config.clone(), ctx.clone()).layer(inner))
}
