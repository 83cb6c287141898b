//! Finding the upstream hosts of a mail domain (RFC 5321 5.1, RFC 7505).
//!
//! Ordering: MX records are sorted by preference, lowest first. Records of
//! equal preference are shuffled on every lookup, as RFC 5321 5.1 asks
//! ("SHOULD be ... randomized"), so load spreads across equal MXs; callers
//! must not rely on the order inside a preference level.
//!
//! Addresses: each host's A records come before its AAAA records. An
//! address already listed under an earlier (more preferred) host is not
//! listed again, so a fallback never retries the same server.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::future::join_all;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Name, TokioResolver};
use koukan_chain::transaction::Response;
use rand::seq::SliceRandom;

/// A host to connect to, with all its (deduplicated) addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The MX exchange (without trailing dot), the domain itself for an
    /// implicit MX, or the configured name / IP literal.
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    #[error("{domain} publishes a null MX: it accepts no mail")]
    NullMx { domain: String },
    /// The name does not exist (NXDOMAIN).
    #[error("{name}: no such domain")]
    NxDomain { name: String },
    /// The name exists but neither it nor its MX exchanges have addresses.
    #[error("{name}: no address records")]
    NoAddresses { name: String },
    /// SERVFAIL, REFUSED, timeout, network error: try again later.
    #[error("{name}: temporary DNS failure: {reason}")]
    Temporary { name: String, reason: String },
    #[error("invalid domain name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("system resolver configuration: {0}")]
    SystemConfig(String),
}

impl ResolveError {
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            ResolveError::Temporary { .. } | ResolveError::SystemConfig(_)
        )
    }

    /// The SMTP reply for a recipient whose domain failed to resolve.
    pub fn response(&self) -> Response {
        match self {
            // RFC 7505 4.2 / RFC 7504 5.1.10.
            ResolveError::NullMx { .. } => Response::new(
                556,
                "5.1.10 recipient domain does not accept mail (null MX)",
            ),
            // RFC 3463 X.1.2: bad destination system address.
            ResolveError::NxDomain { .. } | ResolveError::InvalidName { .. } => {
                Response::new(550, format!("5.1.2 bad destination domain: {self}"))
            }
            // X.4.4: unable to route.
            ResolveError::NoAddresses { .. } => {
                Response::new(550, format!("5.4.4 unable to route: {self}"))
            }
            // X.4.3: directory server failure.
            ResolveError::Temporary { .. } | ResolveError::SystemConfig(_) => {
                Response::new(451, format!("4.4.3 {self}"))
            }
        }
    }
}

/// Why a single query found nothing.
enum Miss {
    /// The name exists but has no records of that type.
    NoData,
    NxDomain,
    Temporary(String),
}

fn classify(err: &hickory_resolver::ResolveError) -> Miss {
    if let Some(proto) = err.proto()
        && let ProtoErrorKind::NoRecordsFound { response_code, .. } = proto.kind()
    {
        return match *response_code {
            ResponseCode::NoError => Miss::NoData,
            ResponseCode::NXDomain => Miss::NxDomain,
            // SERVFAIL, REFUSED, ...: the answer may differ next time.
            code => Miss::Temporary(format!("server answered {code}")),
        };
    }
    Miss::Temporary(err.to_string())
}

/// Cached answers (hickory's default of 32 is small for a mail relay that
/// sees the same few big providers over and over).
const CACHE_SIZE: usize = 1024;

/// DNS lookups for outbound delivery.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("config", self.inner.config())
            .finish()
    }
}

impl Resolver {
    /// Uses exactly `nameservers` (each over UDP, and TCP for truncated
    /// answers) with short timeouts (2 s, 2 attempts): a slow answer is
    /// reported as a temporary failure rather than holding the client's
    /// SMTP session open.
    pub fn new(nameservers: Vec<SocketAddr>) -> Self {
        Self::with_timeout(nameservers, Duration::from_secs(2), 2)
    }

    /// Like [`Resolver::new`] with an explicit per-query timeout and number
    /// of attempts.
    pub fn with_timeout(nameservers: Vec<SocketAddr>, timeout: Duration, attempts: usize) -> Self {
        let mut config = ResolverConfig::new();
        for ns in nameservers {
            config.add_name_server(NameServerConfig::new(ns, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(ns, Protocol::Tcp));
        }
        let mut builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = attempts.max(1);
        // Only the configured servers decide; /etc/hosts must not shadow
        // test or split-horizon zones.
        opts.use_hosts_file = ResolveHosts::Never;
        opts.cache_size = CACHE_SIZE;
        Self {
            inner: builder.build(),
        }
    }

    /// Uses the system configuration (/etc/resolv.conf).
    pub fn system() -> Result<Self, ResolveError> {
        let mut builder = TokioResolver::builder_tokio()
            .map_err(|e| ResolveError::SystemConfig(e.to_string()))?;
        builder.options_mut().cache_size = CACHE_SIZE;
        Ok(Self {
            inner: builder.build(),
        })
    }

    /// The hosts to try for mail to `domain`, most preferred first.
    ///
    /// - MX records sorted by preference (ties shuffled);
    /// - no MX records: the domain itself (implicit MX, RFC 5321 5.1);
    /// - only null MX records (`.`, RFC 7505): [`ResolveError::NullMx`]
    ///   (a `.` mixed with real exchanges is ignored);
    /// - NXDOMAIN: [`ResolveError::NxDomain`];
    /// - SERVFAIL / timeout: [`ResolveError::Temporary`].
    ///
    /// Exchanges whose addresses cannot be found are skipped; if none is
    /// left the result is `Temporary` when any lookup failed temporarily,
    /// `NoAddresses` otherwise.
    pub async fn resolve_mx(&self, domain: &str) -> Result<Vec<Host>, ResolveError> {
        // An address literal (`b@[192.0.2.1]`) is its own host (RFC 5321
        // 4.1.3); there is nothing to look up.
        if let Some(ip) = ip_literal(domain) {
            return Ok(vec![Host {
                name: domain.to_owned(),
                addrs: vec![ip],
            }]);
        }
        let shown = domain.trim_end_matches('.').to_owned();
        let name = fqdn(domain)?;
        let mut exchanges: Vec<(u16, Name)> = match self.inner.mx_lookup(name).await {
            Ok(lookup) => lookup
                .iter()
                .map(|mx| (mx.preference(), mx.exchange().clone()))
                .collect(),
            Err(e) => match classify(&e) {
                Miss::NoData => Vec::new(),
                Miss::NxDomain => return Err(ResolveError::NxDomain { name: shown }),
                Miss::Temporary(reason) => {
                    return Err(ResolveError::Temporary {
                        name: shown,
                        reason,
                    });
                }
            },
        };

        if exchanges.is_empty() {
            let addrs = self.resolve_host(&shown).await?;
            return Ok(vec![Host { name: shown, addrs }]);
        }
        if exchanges.iter().all(|(_, x)| x.is_root()) {
            return Err(ResolveError::NullMx { domain: shown });
        }
        exchanges.retain(|(_, x)| !x.is_root());

        // Shuffle, then a stable sort: random order within a preference.
        exchanges.shuffle(&mut rand::rng());
        exchanges.sort_by_key(|(pref, _)| *pref);
        let mut seen_names = HashSet::new();
        let names: Vec<String> = exchanges
            .into_iter()
            .map(|(_, x)| x.to_ascii().trim_end_matches('.').to_ascii_lowercase())
            .filter(|n| seen_names.insert(n.clone()))
            .collect();

        let lookups = join_all(names.iter().map(|n| self.resolve_host(n))).await;
        let mut seen_addrs = HashSet::new();
        let mut hosts = Vec::new();
        let mut temporary = None;
        for (name, result) in names.into_iter().zip(lookups) {
            match result {
                Ok(addrs) => {
                    let addrs: Vec<IpAddr> = addrs
                        .into_iter()
                        .filter(|a| seen_addrs.insert(*a))
                        .collect();
                    if !addrs.is_empty() {
                        hosts.push(Host { name, addrs });
                    }
                }
                Err(e) => {
                    tracing::debug!(domain = %shown, exchange = %name, "skipping MX: {e}");
                    if e.is_temporary() && temporary.is_none() {
                        temporary = Some(e);
                    }
                }
            }
        }
        if hosts.is_empty() {
            return Err(temporary.unwrap_or(ResolveError::NoAddresses { name: shown }));
        }
        Ok(hosts)
    }

    /// A and AAAA records of `name` (A first), or the address itself for an
    /// IP literal (`192.0.2.1`, `[192.0.2.1]`, `[IPv6:2001:db8::1]`).
    pub async fn resolve_host(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        if let Some(ip) = ip_literal(name) {
            return Ok(vec![ip]);
        }
        let shown = name.trim_end_matches('.').to_owned();
        let fq = fqdn(name)?;
        let (v4, v6) = futures::join!(
            self.inner.ipv4_lookup(fq.clone()),
            self.inner.ipv6_lookup(fq)
        );
        let mut addrs: Vec<IpAddr> = Vec::new();
        let mut misses = Vec::new();
        match v4 {
            Ok(l) => addrs.extend(l.iter().map(|a| IpAddr::V4(a.0))),
            Err(e) => misses.push(classify(&e)),
        }
        match v6 {
            Ok(l) => addrs.extend(l.iter().map(|a| IpAddr::V6(a.0))),
            Err(e) => misses.push(classify(&e)),
        }
        let mut seen = HashSet::new();
        addrs.retain(|a| seen.insert(*a));
        if !addrs.is_empty() {
            // One family answering is enough to deliver.
            return Ok(addrs);
        }
        if let Some(reason) = misses.iter().find_map(|m| match m {
            Miss::Temporary(r) => Some(r.clone()),
            _ => None,
        }) {
            return Err(ResolveError::Temporary {
                name: shown,
                reason,
            });
        }
        if misses.iter().any(|m| matches!(m, Miss::NxDomain)) {
            return Err(ResolveError::NxDomain { name: shown });
        }
        Err(ResolveError::NoAddresses { name: shown })
    }
}

/// An absolute name, so no search domain is ever appended.
fn fqdn(domain: &str) -> Result<Name, ResolveError> {
    let invalid = |reason: String| ResolveError::InvalidName {
        name: domain.to_owned(),
        reason,
    };
    if domain.trim_end_matches('.').is_empty() {
        return Err(invalid("empty".into()));
    }
    let mut name = Name::from_utf8(domain).map_err(|e| invalid(e.to_string()))?;
    name.set_fqdn(true);
    Ok(name)
}

fn ip_literal(host: &str) -> Option<IpAddr> {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let inner = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
        .unwrap_or(inner);
    inner.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals() {
        assert_eq!(ip_literal("192.0.2.1"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(
            ip_literal("[192.0.2.1]"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            ip_literal("[IPv6:2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(ip_literal("::1"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("mx.example.com"), None);
    }

    #[test]
    fn responses() {
        let r = ResolveError::NullMx {
            domain: "x.test".into(),
        }
        .response();
        assert_eq!(
            r,
            Response::new(
                556,
                "5.1.10 recipient domain does not accept mail (null MX)"
            )
        );
        let r = ResolveError::NxDomain {
            name: "x.test".into(),
        }
        .response();
        assert_eq!(
            r,
            Response::new(550, "5.1.2 bad destination domain: x.test: no such domain")
        );
        assert!(
            ResolveError::Temporary {
                name: "x".into(),
                reason: "y".into()
            }
            .response()
            .is_temp()
        );
    }

    #[tokio::test]
    async fn address_literal_domains_need_no_dns() {
        let res = Resolver::new(vec![]);
        assert_eq!(
            res.resolve_mx("[192.0.2.1]").await.unwrap(),
            vec![Host {
                name: "[192.0.2.1]".into(),
                addrs: vec!["192.0.2.1".parse().unwrap()],
            }]
        );
    }

    #[test]
    fn invalid_names() {
        assert!(matches!(fqdn(""), Err(ResolveError::InvalidName { .. })));
        assert!(matches!(fqdn("."), Err(ResolveError::InvalidName { .. })));
        assert!(fqdn("example.com").unwrap().is_fqdn());
    }
}
