//! The running configuration: one immutable snapshot built from a
//! validated bootstrap, shared through `ArcSwap`. A transaction keeps the
//! snapshot it started with; a reload swaps in a new one for new
//! transactions.
//!
//! What must outlive a snapshot (the store, connection pools, the DNS
//! resolver and its cache) belongs to the [`Process`]; a snapshot built
//! for a reload takes an endpoint's pool and the resolver from there when
//! their config is unchanged, so a reload never drops the idle upstream
//! sessions of an endpoint it did not change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use koukan_chain::{
    BoxTxService, Destination, ReplyClass, Response, Terminal, TerminalService, TxContext,
    TxUpdate, UpdateResponse,
};
use koukan_proto::config::v1 as pb;
use koukan_proto::load::{ConfigError, ConfigErrors, Problem};
use koukan_smtp_client::{
    ClientConfig, ConnectionPool, PoolMetrics, Resolver, ResolverOptions, SmtpClient,
};

use crate::config::endpoint::{client_config, rest_config};
use crate::config::listener::ListenerSpec;
use crate::config::resolve;
use crate::config::{ChainSpec, Delivery, SenderSpec};
use crate::delivery::exploder::Exploder;
use crate::delivery::maildir::{Maildir, MaildirConfig};
use crate::delivery::rest_output::{RestEndpoint, RestOutput, default_parser};
use crate::delivery::store_writer::StoreWriter;
use crate::delivery::{ChainPolicy, Dispatcher, EndpointFactory, NewChain};
use crate::process::Process;
use crate::queue::metrics::DeliveryMetrics;
use crate::queue::{Queue, Submission};

pub struct Snapshot {
    pub node_id: String,
    pub admin: SocketAddr,
    /// Host names the admin server answers to besides its address.
    pub admin_allowed_hosts: Vec<String>,
    pub listeners: Vec<ListenerSpec>,
    senders: HashMap<String, SenderSpec>,
    pub chains: Arc<Chains>,
}

impl Snapshot {
    /// The chain for a sender and tag: the tag's chain if it names one,
    /// else the sender's.
    pub fn chain_for(&self, sender: &str, tag: &str) -> Option<&Arc<ChainSpec>> {
        let s = self.senders.get(sender)?;
        self.chains.spec(s.chain_for(tag))
    }

    /// Whether `sender` is configured.
    pub fn has_sender(&self, sender: &str) -> bool {
        self.senders.contains_key(sender)
    }

    /// Builds a snapshot from a bootstrap that passed validation, taking
    /// from `process` the state of every endpoint (and the resolver) whose
    /// config is unchanged. What validation cannot see (a certificate
    /// that does not parse, a secrets file with bad JSON) fails here, in
    /// the same structured errors as validation's (field path and
    /// problem), so that a control plane's NACK can carry them. Changes nothing in `process`: the caller
    /// keeps the snapshot's state there once it applies it
    /// ([`Process::keep`]).
    pub fn build(
        config_path: &Path,
        b: &pb::Bootstrap,
        process: &Process,
    ) -> Result<Self, ConfigErrors> {
        let res = b.static_resources.clone().unwrap_or_default();
        // Every problem is reported, each with its field path.
        let mut errors = Vec::new();

        let mut listeners = Vec::new();
        for (i, l) in res.listeners.iter().enumerate() {
            let path = format!("static_resources.listeners[{i}]");
            match ListenerSpec::from_pb(config_path, &path, l, &process.auth_tracker) {
                Ok(l) => listeners.push(l),
                Err(e) => errors.push(e),
            }
        }

        let mut specs = HashMap::new();
        for (i, c) in res.chains.iter().enumerate() {
            let path = format!("static_resources.chains[{i}]");
            match ChainSpec::from_pb(c, &res.chains, &path, config_path) {
                Ok(spec) => {
                    specs.insert(c.name.clone(), Arc::new(spec));
                }
                Err(e) => errors.extend(e),
            }
        }

        let senders = res
            .senders
            .iter()
            .map(|s| (s.name.clone(), SenderSpec::from_pb(s)))
            .collect();

        let mut kinds = HashMap::new();
        for (i, e) in res.endpoints.iter().enumerate() {
            let state = match process.endpoint(&e.name, e, config_path) {
                Some(kept) => kept,
                None => match EndpointState::new(config_path, e, &process.pool_metrics) {
                    Ok(Some(state)) => Arc::new(state),
                    Ok(None) => continue,
                    Err((field, what, reason)) => {
                        errors.push(ConfigError::new(
                            format!("static_resources.endpoints[{i}].{field}"),
                            Problem::Load {
                                what,
                                value: e.name.clone(),
                                reason,
                            },
                        ));
                        continue;
                    }
                },
            };
            kinds.insert(e.name.clone(), state);
        }

        let resolver = match process.resolver(&b.dns) {
            Some(kept) => Some(kept),
            None => match new_resolver(b.dns.as_ref()) {
                Ok(r) => Some(r),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
        };

        let address = b
            .admin
            .as_ref()
            .map(|a| a.address.as_str())
            .filter(|a| !a.is_empty())
            .unwrap_or("127.0.0.1:9901");
        let admin = address.parse().map_err(|_| {
            ConfigError::new(
                "admin.address",
                Problem::BadSocketAddr {
                    value: address.to_owned(),
                },
            )
        });
        let admin = match admin {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(e);
                None
            }
        };

        let (Some(resolver), Some(admin), true) = (resolver, admin, errors.is_empty()) else {
            return Err(ConfigErrors::new(config_path, errors));
        };
        Ok(Self {
            node_id: b.node.as_ref().map(|n| n.id.clone()).unwrap_or_default(),
            admin,
            admin_allowed_hosts: b
                .admin
                .as_ref()
                .map(|a| a.allowed_hosts.clone())
                .unwrap_or_default(),
            listeners,
            senders,
            chains: Chains::new(
                specs,
                Arc::new(Endpoints {
                    kinds,
                    resolver,
                    dns: b.dns.clone(),
                    metrics: process.delivery_metrics.clone(),
                }),
                process.queue.clone(),
            ),
        })
    }
}

fn new_resolver(dns: Option<&pb::Dns>) -> Result<Resolver, ConfigError> {
    let mut nameservers = Vec::new();
    for (i, n) in dns.iter().flat_map(|d| d.nameservers.iter()).enumerate() {
        nameservers.push(koukan_proto::load::parse_nameserver(n).ok_or_else(|| {
            ConfigError::new(
                format!("dns.nameservers[{i}]"),
                Problem::BadNameserver { value: n.clone() },
            )
        })?);
    }
    Resolver::from_config(nameservers, &ResolverOptions::default())
        .map_err(|e| ConfigError::new("dns", Problem::Invalid(format!("system DNS resolver: {e}"))))
}

/// The chains of one snapshot and what their terminals need: the one
/// [`NewChain`] every terminal that runs another chain is handed.
pub struct Chains {
    /// Handed to the exploders this builds, so that they run their output
    /// chain on the snapshot they started on.
    me: Weak<Chains>,
    specs: HashMap<String, Arc<ChainSpec>>,
    endpoints: Arc<Endpoints>,
    queue: Option<Arc<Queue>>,
}

impl Chains {
    pub fn new(
        specs: HashMap<String, Arc<ChainSpec>>,
        endpoints: Arc<Endpoints>,
        queue: Option<Arc<Queue>>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            specs,
            endpoints,
            queue,
        })
    }

    pub fn spec(&self, name: &str) -> Option<&Arc<ChainSpec>> {
        self.specs.get(name)
    }

    pub fn specs(&self) -> &HashMap<String, Arc<ChainSpec>> {
        &self.specs
    }

    pub fn endpoints(&self) -> &Arc<Endpoints> {
        &self.endpoints
    }

    /// Where a chain that stores hands its transactions: the output
    /// chain's retry and bounce settings decide what they carry.
    fn submission(&self, queue: &Arc<Queue>, output: &str) -> Arc<Submission> {
        let out = self.specs.get(output);
        Arc::new(Submission {
            queue: queue.clone(),
            output_chain: output.to_owned(),
            retry: out.and_then(|c| c.retry.clone()),
            notification: out.is_some_and(|c| c.notification.is_some()),
        })
    }

    /// Where the REST API stores a transaction for `chain` (the chain its
    /// sender and tag name): a relay chain delivers it itself, from
    /// storage; a store-and-forward or exploder chain hands it to its
    /// output chain, as it does with SMTP mail once stored. None without
    /// storage.
    pub fn rest_submission(&self, chain: &ChainSpec) -> Option<Arc<Submission>> {
        let queue = self.queue.as_ref()?;
        Some(match &chain.delivery {
            Delivery::Relay { .. } => Arc::new(Submission {
                queue: queue.clone(),
                output_chain: chain.name.clone(),
                retry: chain.retry.clone(),
                notification: chain.notification.is_some(),
            }),
            Delivery::StoreAndForward { output_chain } => self.submission(queue, output_chain),
            Delivery::Explode(x) => self.submission(queue, &x.output_chain),
        })
    }

    /// Stacks the chain's filters over its terminal, first filter
    /// outermost.
    pub fn stack(&self, chain: &ChainSpec, ctx: &Arc<TxContext>) -> BoxTxService {
        let mut svc = match (&chain.delivery, &self.queue) {
            (Delivery::Relay { default }, _) => koukan_chain::boxed(TerminalService::new(
                Dispatcher::new(self.endpoints.clone(), default.clone(), ctx.clone()),
            )),
            (Delivery::StoreAndForward { output_chain }, Some(queue)) => {
                koukan_chain::boxed(TerminalService::new(StoreWriter::new(
                    self.submission(queue, output_chain),
                    ctx.clone(),
                )))
            }
            (Delivery::Explode(spec), Some(queue)) => {
                let chains: Arc<dyn NewChain> = self.me.upgrade().expect("called through its Arc");
                koukan_chain::boxed(TerminalService::new(Exploder::new(
                    chains,
                    self.submission(queue, &spec.output_chain),
                    spec.clone(),
                    ctx.clone(),
                )))
            }
            // Validation refuses storing chains without a store; should
            // one get here, it answers rather than relaying instead.
            (_, None) => koukan_chain::boxed(TerminalService::new(Refuse(Response::new(
                451,
                "4.3.5 this chain stores mail and no storage is configured",
            )))),
        };
        for f in chain.filters.iter().rev() {
            svc = f.wrap(svc, ctx);
        }
        svc
    }
}

impl NewChain for Chains {
    fn new_chain(&self, name: &str, ctx: &Arc<TxContext>) -> Option<BoxTxService> {
        self.specs.get(name).map(|c| self.stack(c, ctx))
    }

    fn policy(&self, name: &str) -> Option<ChainPolicy> {
        self.specs.get(name).map(|c| ChainPolicy {
            retry: c.retry.clone(),
            notification: c.notification.clone(),
        })
    }
}

/// Answers everything with a fixed reply: a listener whose sender or chain
/// vanished in a reload still gives clients a clear temporary error.
pub struct Refuse(pub Response);

impl Terminal for Refuse {
    fn update(&mut self, u: TxUpdate) -> BoxFuture<'_, UpdateResponse> {
        let r = UpdateResponse::fill(&u, &self.0);
        Box::pin(async move { r })
    }
}

enum EndpointKind {
    Smtp {
        client: Arc<ClientConfig>,
        tls: Arc<rustls::ClientConfig>,
        /// Idle upstream sessions of this endpoint, shared by its
        /// transactions and kept across reloads that leave the endpoint
        /// as it is; dropped (and QUIT) with the last snapshot using it.
        pool: ConnectionPool,
    },
    Maildir(Arc<MaildirConfig>),
    /// A receiving application: its settings and its HTTP client (one
    /// connection pool), kept across reloads like an SMTP pool.
    Rest(Arc<RestEndpoint>),
}

/// One endpoint's built state, with the config it was built from (the
/// config file too: relative paths in it depend on where it is).
pub struct EndpointState {
    config: pb::Endpoint,
    config_file: std::path::PathBuf,
    kind: EndpointKind,
}

impl EndpointState {
    /// `Err` names the field at fault (under the endpoint), what failed to
    /// load and why.
    fn new(
        config_file: &Path,
        e: &pb::Endpoint,
        pool_metrics: &PoolMetrics,
    ) -> Result<Option<Self>, (&'static str, &'static str, String)> {
        let kind = match &e.endpoint {
            Some(pb::endpoint::Endpoint::Smtp(s)) => {
                let client = client_config(config_file, s);
                let tls = client
                    .build_tls()
                    .map_err(|e| ("smtp", "TLS settings of endpoint", e.to_string()))?;
                EndpointKind::Smtp {
                    pool: ConnectionPool::new(&client, pool_metrics, &e.name),
                    client: Arc::new(client),
                    tls,
                }
            }
            Some(pb::endpoint::Endpoint::Maildir(m)) => {
                EndpointKind::Maildir(Arc::new(MaildirConfig {
                    path: resolve(config_file, &m.path),
                }))
            }
            Some(pb::endpoint::Endpoint::Rest(r)) => {
                let config =
                    rest_config(config_file, r).map_err(|e| ("rest.url", "URL of endpoint", e))?;
                let endpoint = RestEndpoint::new(config, default_parser())
                    .map_err(|e| ("rest", "HTTP client of endpoint", e.to_string()))?;
                EndpointKind::Rest(Arc::new(endpoint))
            }
            None => return Ok(None),
        };
        Ok(Some(Self {
            config: e.clone(),
            config_file: config_file.to_owned(),
            kind,
        }))
    }

    /// Built from this config (an unchanged endpoint keeps its state).
    pub fn built_from(&self, e: &pb::Endpoint, config_file: &Path) -> bool {
        self.config == *e && self.config_file == config_file
    }
}

/// Builds upstream transactions for the endpoints of one snapshot.
pub struct Endpoints {
    kinds: HashMap<String, Arc<EndpointState>>,
    resolver: Resolver,
    /// What the resolver was built from.
    dns: Option<pb::Dns>,
    metrics: DeliveryMetrics,
}

impl Endpoints {
    pub fn states(&self) -> impl Iterator<Item = (&String, &Arc<EndpointState>)> {
        self.kinds.iter()
    }

    pub fn resolver(&self) -> (&Option<pb::Dns>, &Resolver) {
        (&self.dns, &self.resolver)
    }
}

impl EndpointFactory for Endpoints {
    fn connect(&self, d: &Destination, ctx: &Arc<TxContext>) -> Result<BoxTxService, Response> {
        match self.kinds.get(&d.endpoint).map(|s| &s.kind) {
            Some(EndpointKind::Smtp { client, tls, pool }) => {
                Ok(koukan_chain::boxed(SmtpClient::pooled(
                    client.clone(),
                    self.resolver.clone(),
                    tls.clone(),
                    d.hosts.clone(),
                    pool.clone(),
                )))
            }
            Some(EndpointKind::Maildir(cfg)) => Ok(koukan_chain::boxed(TerminalService::new(
                Maildir::new(cfg.clone()),
            ))),
            Some(EndpointKind::Rest(endpoint)) => Ok(koukan_chain::boxed(TerminalService::new(
                RestOutput::new(endpoint.clone(), ctx.clone()),
            ))),
            None => Err(Response::new(
                451,
                format!("4.3.5 endpoint {} is not configured", d.endpoint),
            )),
        }
    }

    fn finished(&self, endpoint: &str, class: ReplyClass) {
        self.metrics.attempt(endpoint, class);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What validation cannot see fails the build with the field path of
    /// the file, every problem reported, in validation's error type.
    #[test]
    fn files_that_do_not_load_are_reported_with_their_field_paths() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.path().join("cert.pem"), garbage).unwrap();
        std::fs::write(dir.path().join("key.pem"), garbage).unwrap();
        std::fs::write(dir.path().join("secrets.json"), "{not json").unwrap();
        let yaml = r#"
node: {id: snapshot-unit}
admin: {address: "127.0.0.1:9"}
static_resources:
  listeners:
  - name: a
    address: "127.0.0.1:1"
    smtp:
      sender: s
      tls: {cert: cert.pem, key: key.pem}
  - name: b
    address: "127.0.0.1:2"
    smtp:
      sender: s
      auth: {secrets: secrets.json, allow_plaintext_on_loopback: true}
  senders: [{name: s, chain: c}]
  chains: [{name: c, endpoint: box}]
  endpoints: [{name: box, maildir: {path: box}}]
"#;
        let path = dir.path().join("koukan.yaml");
        std::fs::write(&path, yaml).unwrap();
        let b = koukan_proto::load::load_bootstrap_file(&path).expect("passes validation");
        let process = Process::new(None, Arc::default(), Arc::default());
        let Err(e) = Snapshot::build(&path, &b, &process) else {
            panic!("built with unloadable files");
        };
        let paths: Vec<&str> = e.paths().collect();
        assert_eq!(
            paths,
            [
                "static_resources.listeners[0].smtp.tls",
                "static_resources.listeners[1].smtp.auth.secrets",
            ],
            "{e}"
        );
        assert!(
            e.errors
                .iter()
                .all(|e| matches!(e.problem, Problem::Load { .. })),
            "{e:?}"
        );
        assert_eq!(e.file, path);
    }

    /// A reload keeps a rest endpoint's client (its connection pool) when
    /// the endpoint is unchanged, and builds a new one when it changed.
    #[test]
    fn an_unchanged_rest_endpoint_keeps_its_client_across_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = |url: &str| {
            format!(
                r#"
node: {{id: snapshot-unit}}
admin: {{address: "127.0.0.1:9"}}
static_resources:
  listeners: [{{name: a, address: "127.0.0.1:1", smtp: {{sender: s}}}}]
  senders: [{{name: s, chain: c}}]
  chains: [{{name: c, endpoint: app}}]
  endpoints:
  - {{name: app, rest: {{url: "{url}"}}}}
  - {{name: box, maildir: {{path: box}}}}
"#
            )
        };
        let path = dir.path().join("koukan.yaml");
        let process = Process::new(None, Arc::default(), Arc::default());
        let mut built = Vec::new();
        for url in [
            "http://127.0.0.1:8002/t",
            "http://127.0.0.1:8002/t",
            "http://127.0.0.1:8003/t",
        ] {
            std::fs::write(&path, yaml(url)).unwrap();
            let b = koukan_proto::load::load_bootstrap_file(&path).unwrap();
            let snapshot = Snapshot::build(&path, &b, &process).unwrap();
            process.keep(&snapshot);
            let states: HashMap<String, Arc<EndpointState>> = snapshot
                .chains
                .endpoints()
                .states()
                .map(|(n, s)| (n.clone(), s.clone()))
                .collect();
            assert!(matches!(states["app"].kind, EndpointKind::Rest(_)));
            built.push(states);
        }
        assert!(Arc::ptr_eq(&built[0]["app"], &built[1]["app"]), "kept");
        assert!(!Arc::ptr_eq(&built[1]["app"], &built[2]["app"]), "rebuilt");
        assert!(Arc::ptr_eq(&built[1]["box"], &built[2]["box"]));
    }
}
