//! The running configuration: one immutable snapshot built from a validated
//! bootstrap, shared through `ArcSwap`. A transaction keeps the snapshot it
//! started with; a reload swaps in a new one for new transactions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use koukan_chain::{BoxTxService, Destination, HostPort, Hosts, Response, TerminalService};
use koukan_filters::received_header::ReceivedHeaderConfig;
use koukan_filters::router::{AddressList, RouterConfig, RoutingPolicy};
use koukan_proto::config::v1 as pb;
use koukan_smtp_client::{ClientConfig, ConnectionPool, Resolver, SmtpClient, TlsMode};
use koukan_smtp_server::{
    AuthFailureLimits, AuthFailurePolicy, AuthFailureTracker, Limits, Secrets, SessionConfig,
};

use crate::endpoints::EndpointFactory;
use crate::endpoints::exploder::ExploderSpec;
use crate::endpoints::maildir::{Maildir, MaildirConfig};
use crate::scheduler::StorageCtx;
use crate::scheduler::retry::RetryPolicy;

/// A filter of a chain, with its parsed config shared by every
/// transaction built from it.
#[derive(Debug)]
pub enum FilterSpec {
    Router(Arc<RouterConfig>),
    ReceivedHeader(Arc<ReceivedHeaderConfig>),
    MessageParse(Arc<koukan_filters::message_parse::MessageParseConfig>),
    /// A filter with a bug on purpose (test builds only): see
    /// [`crate::chains::fault`].
    #[cfg(test)]
    Panic,
}

#[derive(Debug)]
pub struct ChainSpec {
    pub name: String,
    pub filters: Vec<FilterSpec>,
    pub default_destination: Option<Arc<Destination>>,
    /// Store-and-forward: the chain that delivers what this one stores.
    pub output_chain: Option<String>,
    /// Retries of transactions this chain delivers from storage.
    pub retry: Option<RetryPolicy>,
    pub notification: Option<NotificationSpec>,
    pub exploder: Option<Arc<ExploderSpec>>,
}

#[derive(Clone, Debug)]
pub struct NotificationSpec {
    /// The chain that delivers bounces (the notification chain's own
    /// output chain when it stores and forwards).
    pub output_chain: String,
    pub mailer_daemon: Option<String>,
}

fn retry_policy(r: &pb::RetryParams) -> RetryPolicy {
    let d = RetryPolicy::default();
    RetryPolicy {
        max_attempts: nonzero(r.max_attempts, d.max_attempts),
        min_attempt_time: duration(&r.min_attempt_time, d.min_attempt_time),
        max_attempt_time: duration(&r.max_attempt_time, d.max_attempt_time),
        backoff_factor: if r.backoff_factor > 0.0 {
            r.backoff_factor
        } else {
            d.backoff_factor
        },
        deadline: duration(&r.deadline, d.deadline),
        jitter: d.jitter,
    }
}

/// Upstream transactions one exploded transaction runs at once, unless
/// configured (`exploder.max_concurrent_upstreams`).
pub const DEFAULT_MAX_UPSTREAMS: usize = 100;

pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    pub session: Arc<SessionConfig>,
    pub sender: String,
    pub tag: String,
}

struct SenderSpec {
    chain: String,
    tags: HashMap<String, String>,
}

enum EndpointKind {
    Smtp {
        client: Arc<ClientConfig>,
        tls: Arc<rustls::ClientConfig>,
        /// Idle upstream sessions of this endpoint, shared by its
        /// transactions; dropped (and QUIT) with the snapshot.
        pool: ConnectionPool,
    },
    Maildir(Arc<MaildirConfig>),
}

/// Builds upstream transactions for the endpoints of one snapshot.
pub struct Endpoints {
    kinds: HashMap<String, EndpointKind>,
    resolver: Arc<Resolver>,
}

impl EndpointFactory for Endpoints {
    fn connect(&self, d: &Destination) -> Result<BoxTxService, Response> {
        match self.kinds.get(&d.endpoint) {
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
            None => Err(Response::new(
                451,
                format!("4.3.5 endpoint {} is not configured", d.endpoint),
            )),
        }
    }
}

pub struct Runtime {
    pub node_id: String,
    pub admin: SocketAddr,
    /// Host names the admin server answers to besides its address.
    pub admin_allowed_hosts: Vec<String>,
    pub listeners: Vec<ListenerSpec>,
    pub(crate) chains: HashMap<String, Arc<ChainSpec>>,
    senders: HashMap<String, SenderSpec>,
    pub endpoints: Arc<Endpoints>,
    /// The process's store and scheduler, kept across reloads.
    pub storage: Option<Arc<StorageCtx>>,
    /// The process's AUTH failure counts, shared by every SMTP listener
    /// and kept across reloads (a reload must not hand a guesser fresh
    /// attempts).
    pub auth_tracker: Arc<AuthFailureTracker>,
}

impl Runtime {
    pub fn chain(&self, name: &str) -> Option<&Arc<ChainSpec>> {
        self.chains.get(name)
    }

    /// The chain for a sender and tag: the tag's chain if it names one,
    /// else the sender's.
    pub fn chain_for(&self, sender: &str, tag: &str) -> Option<&Arc<ChainSpec>> {
        let s = self.senders.get(sender)?;
        let name = s.tags.get(tag).unwrap_or(&s.chain);
        self.chains.get(name)
    }
}

pub(crate) fn duration(d: &Option<pbjson_types::Duration>, default: Duration) -> Duration {
    match d {
        Some(d) if d.seconds > 0 || d.nanos > 0 => {
            Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
        }
        _ => default,
    }
}

pub(crate) fn nonzero<T: Default + PartialEq>(v: T, default: T) -> T {
    if v == T::default() { default } else { v }
}

/// Paths in the config are relative to the config file's directory.
fn resolve(config_file: &Path, p: &str) -> PathBuf {
    koukan_proto::load::resolve_path(config_file, p)
}

fn host_ports(list: &[pb::HostPort]) -> Vec<HostPort> {
    list.iter()
        .map(|h| HostPort {
            host: h.host.clone(),
            port: nonzero(h.port, 25) as u16,
        })
        .collect()
}

fn destination(d: &pb::Destination) -> Arc<Destination> {
    Arc::new(Destination {
        endpoint: d.endpoint.clone(),
        hosts: if d.host_list.is_empty() {
            Hosts::EndpointDefault
        } else {
            Hosts::Static(host_ports(&d.host_list))
        },
    })
}

fn router(r: &pb::RouterFilter) -> RouterConfig {
    use pb::routing_policy::Policy;
    let policy = r
        .policy
        .as_ref()
        .and_then(|p| p.policy.as_ref())
        .map(|p| match p {
            Policy::AddressList(a) => RoutingPolicy::AddressList(AddressList {
                domains: a.domains.iter().map(|d| d.to_lowercase()).collect(),
                prefixes: a.prefixes.iter().map(|d| d.to_lowercase()).collect(),
                delimiter: a.delimiter.chars().next(),
                destination: a.destination.as_ref().map(destination),
            }),
            Policy::DestDomain(d) => RoutingPolicy::DestDomain {
                endpoint: d.endpoint.clone(),
                port: nonzero(d.dest_port, 25) as u16,
            },
        });
    RouterConfig {
        policy,
        destination: r.destination.as_ref().map(destination),
    }
}

fn tls_server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading key {}", key.display()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// A listener's failure limits, unless turned off.
fn auth_failures(
    f: Option<&pb::AuthFailureLimits>,
    tracker: &Arc<AuthFailureTracker>,
) -> Option<AuthFailureLimits> {
    let d = AuthFailurePolicy::default();
    let policy = match f {
        Some(f) if f.disabled => return None,
        None => d,
        Some(f) => AuthFailurePolicy {
            max_failures_per_address: nonzero(
                f.max_failures_per_address,
                d.max_failures_per_address,
            ),
            max_failures_per_user: nonzero(f.max_failures_per_user, d.max_failures_per_user),
            window: duration(&f.window, d.window),
            lockout: duration(&f.lockout, d.lockout),
            delay: duration(&f.delay, d.delay),
            max_delay: duration(&f.max_delay, d.max_delay),
        },
    };
    Some(AuthFailureLimits {
        policy,
        tracker: tracker.clone(),
    })
}

fn session_config(
    config_file: &Path,
    name: &str,
    s: &pb::SmtpListener,
    auth_tracker: &Arc<AuthFailureTracker>,
) -> anyhow::Result<Arc<SessionConfig>> {
    let tls = match &s.tls {
        Some(t) if !t.cert.is_empty() => Some(tls_server_config(
            &resolve(config_file, &t.cert),
            &resolve(config_file, &t.key),
        )?),
        _ => None,
    };
    let (auth, require_auth, loopback, auth_failures) = match &s.auth {
        Some(a) if !a.secrets.is_empty() => {
            let path = resolve(config_file, &a.secrets);
            let secrets = Secrets::load(&path)
                .with_context(|| format!("loading secrets {}", path.display()))?;
            (
                Some(Arc::new(secrets)),
                a.require,
                a.allow_plaintext_on_loopback,
                auth_failures(a.failure_limits.as_ref(), auth_tracker),
            )
        }
        _ => (None, false, false, None),
    };
    let d = Limits::default();
    let limits = match &s.limits {
        Some(l) => Limits {
            max_message_size: nonzero(l.max_message_size, d.max_message_size),
            max_recipients: nonzero(l.max_recipients as usize, d.max_recipients),
            max_line_length: nonzero(l.max_line_length as usize, d.max_line_length),
            max_data_line_length: nonzero(l.max_data_line_length as usize, d.max_data_line_length),
            max_connections: nonzero(l.max_connections as usize, d.max_connections),
            max_bad_commands: nonzero(l.max_bad_commands, d.max_bad_commands),
            command_timeout: duration(&l.command_timeout, d.command_timeout),
            data_block_timeout: duration(&l.data_timeout, d.data_block_timeout),
            drain_timeout: duration(&l.drain_timeout, d.drain_timeout),
            ..d
        },
        None => d,
    };
    let hostname = if s.hostname.is_empty() {
        gethostname::gethostname().to_string_lossy().into_owned()
    } else {
        s.hostname.clone()
    };
    Ok(Arc::new(SessionConfig {
        listener_name: name.to_owned(),
        hostname,
        tls,
        implicit_tls: s.implicit_tls,
        auth,
        auth_allow_plaintext_loopback: loopback,
        require_auth,
        auth_failures,
        limits,
    }))
}

fn client_config(config_file: &Path, e: &pb::SmtpEndpoint) -> ClientConfig {
    let d = ClientConfig::default();
    ClientConfig {
        ehlo_hostname: e.ehlo_hostname.clone(),
        verify_certificates: e.verify_certificates,
        extra_ca_file: (!e.ca_file.is_empty()).then(|| resolve(config_file, &e.ca_file)),
        tls: match pb::TlsMode::try_from(e.tls) {
            Ok(pb::TlsMode::Required) => TlsMode::Required,
            Ok(pb::TlsMode::Disabled) => TlsMode::Disabled,
            _ => TlsMode::Opportunistic,
        },
        use_chunking: !e.disable_chunking,
        connect_timeout: duration(&e.connect_timeout, d.connect_timeout),
        command_timeout: duration(&e.command_timeout, d.command_timeout),
        data_block_timeout: duration(&e.data_timeout, d.data_block_timeout),
        max_hosts: nonzero(e.max_hosts as usize, d.max_hosts),
        max_idle_per_destination: match &e.connection_reuse {
            Some(r) if r.disabled => 0,
            Some(r) => nonzero(
                r.max_idle_per_destination as usize,
                d.max_idle_per_destination,
            ),
            None => d.max_idle_per_destination,
        },
        idle_timeout: e.connection_reuse.as_ref().map_or(d.idle_timeout, |r| {
            duration(&r.idle_timeout, d.idle_timeout)
        }),
        max_transactions_per_connection: e.connection_reuse.as_ref().map_or(
            d.max_transactions_per_connection,
            |r| {
                nonzero(
                    r.max_transactions_per_connection as usize,
                    d.max_transactions_per_connection,
                )
            },
        ),
        default_hosts: host_ports(&e.hosts),
        ..d
    }
}

impl Runtime {
    /// Builds a snapshot from a bootstrap that passed validation. What
    /// validation cannot see (a certificate that does not parse, a secrets
    /// file with bad JSON) fails here, naming the resource.
    pub fn build(
        config_path: &Path,
        b: &pb::Bootstrap,
        storage: Option<Arc<StorageCtx>>,
        auth_tracker: Arc<AuthFailureTracker>,
    ) -> anyhow::Result<Self> {
        let res = b.static_resources.clone().unwrap_or_default();

        let mut listeners = Vec::new();
        for (i, l) in res.listeners.iter().enumerate() {
            let Some(pb::listener::Protocol::Smtp(s)) = &l.protocol else {
                continue;
            };
            let session = session_config(config_path, &l.name, s, &auth_tracker)
                .with_context(|| format!("static_resources.listeners[{i}] ({})", l.name))?;
            listeners.push(ListenerSpec {
                name: l.name.clone(),
                address: l
                    .address
                    .parse()
                    .map_err(|e| anyhow!("static_resources.listeners[{i}].address: {e}"))?,
                session,
                sender: s.sender.clone(),
                tag: s.tag.clone(),
            });
        }

        let chains = res
            .chains
            .iter()
            .map(|c| {
                let filters = c
                    .filters
                    .iter()
                    .filter_map(|f| f.filter.as_ref())
                    .map(|f| match f {
                        pb::filter::Filter::Router(r) => FilterSpec::Router(Arc::new(router(r))),
                        pb::filter::Filter::ReceivedHeader(r) => {
                            FilterSpec::ReceivedHeader(Arc::new(ReceivedHeaderConfig {
                                received_hostname: r.received_hostname.clone(),
                            }))
                        }
                        pb::filter::Filter::MessageParse(m) => FilterSpec::MessageParse(Arc::new(
                            crate::message_parse::config(config_path, m),
                        )),
                    })
                    .collect();
                let default_destination = (!c.endpoint.is_empty()).then(|| {
                    Arc::new(Destination {
                        endpoint: c.endpoint.clone(),
                        hosts: Hosts::EndpointDefault,
                    })
                });
                let notification = c.notification.as_ref().map(|n| NotificationSpec {
                    output_chain: res
                        .chains
                        .iter()
                        .find(|x| x.name == n.chain)
                        .and_then(|x| x.store_and_forward.as_ref())
                        .map_or_else(|| n.chain.clone(), |sf| sf.output_chain.clone()),
                    mailer_daemon: (!n.mailer_daemon.is_empty()).then(|| n.mailer_daemon.clone()),
                });
                (
                    c.name.clone(),
                    Arc::new(ChainSpec {
                        name: c.name.clone(),
                        filters,
                        default_destination,
                        output_chain: c
                            .store_and_forward
                            .as_ref()
                            .map(|sf| sf.output_chain.clone()),
                        retry: c.retry.as_ref().map(retry_policy),
                        notification,
                        exploder: c.exploder.as_ref().map(|x| {
                            let (rcpt, data) = if x.msa { (5, 30) } else { (30, 300) };
                            Arc::new(ExploderSpec {
                                output_chain: x.output_chain.clone(),
                                msa: x.msa,
                                rcpt_timeout: duration(&x.rcpt_timeout, Duration::from_secs(rcpt)),
                                data_timeout: duration(&x.data_timeout, Duration::from_secs(data)),
                                max_upstreams: nonzero(
                                    x.max_concurrent_upstreams as usize,
                                    DEFAULT_MAX_UPSTREAMS,
                                ),
                            })
                        }),
                    }),
                )
            })
            .collect();

        let senders = res
            .senders
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    SenderSpec {
                        chain: s.chain.clone(),
                        tags: s
                            .tags
                            .iter()
                            .filter(|t| !t.chain.is_empty())
                            .map(|t| (t.name.clone(), t.chain.clone()))
                            .collect(),
                    },
                )
            })
            .collect();

        let mut kinds = HashMap::new();
        for (i, e) in res.endpoints.iter().enumerate() {
            let kind = match &e.endpoint {
                Some(pb::endpoint::Endpoint::Smtp(s)) => {
                    let client = client_config(config_path, s);
                    let tls = client.build_tls().with_context(|| {
                        format!("static_resources.endpoints[{i}].smtp ({})", e.name)
                    })?;
                    EndpointKind::Smtp {
                        pool: ConnectionPool::new(&client),
                        client: Arc::new(client),
                        tls,
                    }
                }
                Some(pb::endpoint::Endpoint::Maildir(m)) => {
                    EndpointKind::Maildir(Arc::new(MaildirConfig {
                        path: resolve(config_path, &m.path),
                    }))
                }
                None => continue,
            };
            kinds.insert(e.name.clone(), kind);
        }

        // Validation has checked every entry parses.
        let nameservers: Vec<SocketAddr> = b
            .dns
            .iter()
            .flat_map(|d| d.nameservers.iter())
            .filter_map(|n| koukan_proto::load::parse_nameserver(n))
            .collect();
        let resolver = if nameservers.is_empty() {
            Resolver::system().context("system DNS resolver")?
        } else {
            Resolver::new(nameservers)
        };

        let admin = b
            .admin
            .as_ref()
            .map(|a| a.address.as_str())
            .filter(|a| !a.is_empty())
            .unwrap_or("127.0.0.1:9901")
            .parse()
            .context("admin.address")?;

        Ok(Self {
            node_id: b.node.as_ref().map(|n| n.id.clone()).unwrap_or_default(),
            admin,
            admin_allowed_hosts: b
                .admin
                .as_ref()
                .map(|a| a.allowed_hosts.clone())
                .unwrap_or_default(),
            listeners,
            chains,
            senders,
            storage,
            auth_tracker,
            endpoints: Arc::new(Endpoints {
                kinds,
                resolver: Arc::new(resolver),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failure_limits_from_config() {
        let tracker = Arc::new(AuthFailureTracker::new());
        let d = AuthFailurePolicy::default();
        // Absent, or present with zero fields: on, with the defaults.
        assert_eq!(auth_failures(None, &tracker).unwrap().policy, d);
        let zero = pb::AuthFailureLimits::default();
        assert_eq!(auth_failures(Some(&zero), &tracker).unwrap().policy, d);
        // Every field maps.
        let secs = |s| {
            Some(pbjson_types::Duration {
                seconds: s,
                nanos: 0,
            })
        };
        let set = pb::AuthFailureLimits {
            disabled: false,
            max_failures_per_address: 3,
            max_failures_per_user: 4,
            window: secs(60),
            lockout: secs(120),
            delay: Some(pbjson_types::Duration {
                seconds: 0,
                nanos: 250_000_000,
            }),
            max_delay: secs(2),
        };
        let l = auth_failures(Some(&set), &tracker).unwrap();
        assert_eq!(
            l.policy,
            AuthFailurePolicy {
                max_failures_per_address: 3,
                max_failures_per_user: 4,
                window: Duration::from_secs(60),
                lockout: Duration::from_secs(120),
                delay: Duration::from_millis(250),
                max_delay: Duration::from_secs(2),
            }
        );
        // The process's tracker, not a copy.
        assert!(Arc::ptr_eq(&l.tracker, &tracker));
        let off = pb::AuthFailureLimits {
            disabled: true,
            ..set
        };
        assert!(auth_failures(Some(&off), &tracker).is_none());
    }
}
