//! The filter registry: each filter kind is its proto message (a member of
//! `Filter.filter` in config.proto, whose pure checks live with the rest of
//! validation in `koukan_proto::load` so a control plane shares them) plus
//! one file here that turns it into a [`FilterFactory`]. Adding a filter
//! is adding that file and its line in [`KINDS`].

mod message_parse;
mod received_header;
mod router;

#[cfg(test)]
pub(crate) mod fault;

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use koukan_chain::{BoxTxService, TxContext};
use koukan_proto::config::v1 as pb;
use koukan_proto::load::{ConfigError, Problem};

/// Wraps the rest of a transaction's stack in one filter (linkerd's
/// `NewService`, per transaction): built once per snapshot from the
/// config, called for each transaction with what it needs of it.
pub trait FilterFactory: Send + Sync + Debug + 'static {
    fn wrap(&self, inner: BoxTxService, ctx: &Arc<TxContext>) -> BoxTxService;
}

/// One kind of filter: the name of its `Filter.filter` member and its
/// builder, which answers `None` for another kind's config. It gets the
/// filter's field path (for errors) and the config file (which anchors
/// relative paths).
pub struct FilterKind {
    pub name: &'static str,
    pub build: fn(&pb::filter::Filter, &str, &Path) -> Option<Built>,
}

/// A filter's factory, or what is wrong with its config (field paths).
pub type Built = Result<Arc<dyn FilterFactory>, Vec<ConfigError>>;

/// Every filter kind the proxy knows.
pub const KINDS: &[FilterKind] = &[router::KIND, received_header::KIND, message_parse::KIND];

/// The factory of one configured filter; `path` is its field path, for
/// errors.
pub fn build(f: &pb::Filter, path: &str, config_file: &Path) -> Built {
    let Some(filter) = &f.filter else {
        return Err(vec![ConfigError {
            path: path.to_owned(),
            problem: Problem::OneofMissing("a filter kind"),
        }]);
    };
    KINDS
        .iter()
        .find_map(|k| (k.build)(filter, path, config_file))
        // The registry is exhaustive over the oneof: a member without a
        // kind is a bug caught by the test below.
        .unwrap_or_else(|| {
            Err(vec![ConfigError {
                path: path.to_owned(),
                problem: Problem::OneofMissing("a filter kind this proxy implements"),
            }])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every member of `Filter.filter` has a kind in the registry, under
    /// its proto field name.
    #[test]
    fn the_registry_covers_every_filter_in_the_schema() {
        let examples = [
            ("router", pb::filter::Filter::Router(Default::default())),
            (
                "received_header",
                pb::filter::Filter::ReceivedHeader(Default::default()),
            ),
            (
                "message_parse",
                pb::filter::Filter::MessageParse(Default::default()),
            ),
        ];
        for (name, f) in examples {
            let kind = KINDS
                .iter()
                .find(|k| (k.build)(&f, "x", Path::new("k.yaml")).is_some())
                .unwrap_or_else(|| panic!("no kind builds {name}"));
            assert_eq!(kind.name, name);
            assert_eq!(
                KINDS
                    .iter()
                    .filter(|k| (k.build)(&f, "x", Path::new("k.yaml")).is_some())
                    .count(),
                1
            );
        }
    }
}
