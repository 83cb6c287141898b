#![forbid(unsafe_code)]
//! Koukan's DNS: one [`Resolver`] handle for the whole process, shared by
//! outbound delivery (MX and address lookups) and policy filters (TXT for
//! SPF, DMARC and DKIM). One handle means one cache and one set of
//! timeouts: a domain looked up for SPF is already cached when its MX is
//! wanted, and a slow nameserver is bounded the same way everywhere.
//!
//! Errors are DNS outcomes ([`ResolveError`]); what they mean to an SMTP
//! client (the reply code and text) is the SMTP client's business.
//!
//! MX ordering: records are sorted by preference, lowest first. Records
//! of equal preference are shuffled on every lookup, as RFC 5321 5.1 asks
//! ("SHOULD be ... randomized"), so load spreads across equal MXs; callers
//! must not rely on the order inside a preference level.
//!
//! Addresses: each host's A records come before its AAAA records. An
//! address already listed under an earlier (more preferred) host is not
//! listed again, so a fallback never retries the same server.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Name, TokioResolver};
use rand::seq::SliceRandom;

/// A host to connect to, with all its (deduplicated) addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The MX exchange (without trailing dot), the domain itself for an
    /// implicit MX, or the configured name / IP literal.
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

/// Why a lookup found nothing usable.
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
}

impl ResolveError {
    /// Whether the same lookup may succeed later (a mail relay retries;
    /// an SPF check answers `temperror`).
    pub fn is_temporary(&self) -> bool {
        matches!(self, ResolveError::Temporary { .. })
    }
}

/// A resolver that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// /etc/resolv.conf is missing or unreadable.
    #[error("system resolver configuration: {0}")]
    SystemConfig(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// How the resolver queries and caches. The defaults suit a mail relay:
/// a slow answer becomes a temporary failure within seconds rather than
/// holding a client's SMTP session open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverOptions {
    /// Per query and nameserver.
    pub timeout: Duration,
    /// Tries per query (at least one).
    pub attempts: usize,
    /// Answers kept (positive and negative, each for its TTL).
    pub cache_size: usize,
}

/// Hickory's default cache of 32 answers is small for a relay that sees
/// the same few big providers over and over.
pub const DEFAULT_CACHE_SIZE: usize = 1024;

impl Default for ResolverOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            attempts: 2,
            cache_size: DEFAULT_CACHE_SIZE,
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

/// The process's DNS resolver. Cheap to clone: every clone is the same
/// resolver (one cache, one set of nameserver connections), so build one
/// and hand clones to whoever looks names up.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("config", self.inner.config())
            .field("options", self.inner.options())
            .finish()
    }
}

impl Resolver {
    /// Uses exactly `nameservers` with the default options. With none, no
    /// name resolves (every lookup fails temporarily): what a client that
    /// only ever connects to IP literals needs.
    pub fn new(nameservers: Vec<SocketAddr>) -> Self {
        Self::with_options(nameservers, &ResolverOptions::default())
    }

    /// Uses exactly `nameservers`, each over UDP (and TCP for truncated
    /// answers).
    pub fn with_options(nameservers: Vec<SocketAddr>, opts: &ResolverOptions) -> Self {
        let mut config = ResolverConfig::new();
        for ns in nameservers {
            config.add_name_server(NameServerConfig::new(ns, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(ns, Protocol::Tcp));
        }
        let mut builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        let o = builder.options_mut();
        o.timeout = opts.timeout;
        o.attempts = opts.attempts.max(1);
        o.cache_size = opts.cache_size;
        // Only the configured servers decide; /etc/hosts must not shadow
        // test or split-horizon zones.
        o.use_hosts_file = ResolveHosts::Never;
        Self {
            inner: Arc::new(builder.build()),
        }
    }

    /// Uses the system configuration (/etc/resolv.conf), with `opts`'s
    /// timeout, attempts and cache size in place of the file's.
    pub fn system(opts: &ResolverOptions) -> Result<Self, ConfigError> {
        let mut builder =
            TokioResolver::builder_tokio().map_err(|e| ConfigError::SystemConfig(e.into()))?;
        let o = builder.options_mut();
        o.timeout = opts.timeout;
        o.attempts = opts.attempts.max(1);
        o.cache_size = opts.cache_size;
        Ok(Self {
            inner: Arc::new(builder.build()),
        })
    }

    /// `nameservers` if any are configured, else the system's: what the
    /// `dns` section of the configuration means.
    pub fn from_config(
        nameservers: Vec<SocketAddr>,
        opts: &ResolverOptions,
    ) -> Result<Self, ConfigError> {
        if nameservers.is_empty() {
            Self::system(opts)
        } else {
            Ok(Self::with_options(nameservers, opts))
        }
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
    /// IP literal (`192.0.2.1`, `[192.0.2.1]`, `[IPv6:2001:db8::1]`). One
    /// family answering is enough; the other's failure is then ignored.
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

    /// The A records of `name` alone (SPF's `a` and `mx` mechanisms want
    /// the client's address family only). No records: empty.
    pub async fn ipv4(&self, name: &str) -> Result<Vec<Ipv4Addr>, ResolveError> {
        let fq = fqdn(name)?;
        match self.inner.ipv4_lookup(fq).await {
            Ok(l) => Ok(l.iter().map(|a| a.0).collect()),
            Err(e) => miss_or_empty(name, &e),
        }
    }

    /// The AAAA records of `name` alone; see [`Resolver::ipv4`].
    pub async fn ipv6(&self, name: &str) -> Result<Vec<Ipv6Addr>, ResolveError> {
        let fq = fqdn(name)?;
        match self.inner.ipv6_lookup(fq).await {
            Ok(l) => Ok(l.iter().map(|a| a.0).collect()),
            Err(e) => miss_or_empty(name, &e),
        }
    }

    /// The TXT records of `name`, one entry per record, its
    /// character-strings joined without separator (as SPF, RFC 7208 3.3,
    /// and DKIM, RFC 6376 3.6.2.2, read them; a record over 255 octets
    /// must be split into several strings). Bytes, not text: TXT data is
    /// arbitrary, and the policy parsing it decides what is valid.
    ///
    /// A name without TXT records gives an empty list (for SPF and DMARC
    /// "no record" is an answer, not a failure); a name that does not
    /// exist gives [`ResolveError::NxDomain`], so callers that care can
    /// tell the two apart.
    pub async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, ResolveError> {
        let fq = fqdn(name)?;
        match self.inner.txt_lookup(fq).await {
            Ok(l) => Ok(l
                .iter()
                .map(|txt| txt.iter().flatten().copied().collect())
                .collect()),
            Err(e) => miss_or_empty(name, &e),
        }
    }
}

/// A failed single-type lookup: empty for NODATA, else the error.
fn miss_or_empty<T>(
    name: &str,
    e: &hickory_resolver::ResolveError,
) -> Result<Vec<T>, ResolveError> {
    let shown = name.trim_end_matches('.').to_owned();
    match classify(e) {
        Miss::NoData => Ok(Vec::new()),
        Miss::NxDomain => Err(ResolveError::NxDomain { name: shown }),
        Miss::Temporary(reason) => Err(ResolveError::Temporary {
            name: shown,
            reason,
        }),
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
        assert_eq!(
            res.resolve_host("[IPv6:2001:db8::1]").await.unwrap(),
            vec!["2001:db8::1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn invalid_names() {
        assert!(matches!(fqdn(""), Err(ResolveError::InvalidName { .. })));
        assert!(matches!(fqdn("."), Err(ResolveError::InvalidName { .. })));
        assert!(fqdn("example.com").unwrap().is_fqdn());
    }

    #[test]
    fn clones_share_one_resolver() {
        let a = Resolver::new(vec![]);
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
    }

    #[test]
    fn options_reach_hickory() {
        let opts = ResolverOptions {
            timeout: Duration::from_millis(300),
            attempts: 0,
            cache_size: 7,
        };
        let res = Resolver::with_options(vec!["127.0.0.1:5353".parse().unwrap()], &opts);
        let o = res.inner.options();
        assert_eq!(o.timeout, Duration::from_millis(300));
        // Zero attempts would never ask: at least one.
        assert_eq!(o.attempts, 1);
        assert_eq!(o.cache_size, 7);
        assert_eq!(o.use_hosts_file, ResolveHosts::Never);
        // UDP and TCP for the one server.
        assert_eq!(res.inner.config().name_servers().len(), 2);
    }
}
