//! `message_parse`: a whole-message filter that checks the header block
//! and records its defects as a signal, optionally refusing the message.

use std::path::Path;
use std::sync::Arc;

use koukan_chain::body::SpoolOptions;
use koukan_chain::{BoxTxService, Response, TxContext};
use koukan_filters::message_parse::{DEFAULT_MAX_HEADER_BYTES, MessageParseConfig, layer};
use koukan_proto::config::v1 as pb;
use tower::Layer;

use super::{FilterFactory, FilterKind};

pub const KIND: FilterKind = FilterKind {
    name: "message_parse",
    build: |f, _path, config_file| match f {
        pb::filter::Filter::MessageParse(m) => {
            Some(Ok(Arc::new(MessageParse(Arc::new(config(config_file, m))))))
        }
        _ => None,
    },
};

#[derive(Debug)]
struct MessageParse(Arc<MessageParseConfig>);

impl FilterFactory for MessageParse {
    fn wrap(&self, inner: BoxTxService, ctx: &Arc<TxContext>) -> BoxTxService {
        koukan_chain::boxed(layer(self.0.clone(), ctx.clone()).layer(inner))
    }
}

/// The filter's config; `config_file` anchors a relative `spool_dir`
/// (validation has checked the directory and the reply code).
fn config(config_file: &Path, m: &pb::MessageParseFilter) -> MessageParseConfig {
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
