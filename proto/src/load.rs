//! Loading a bootstrap file: YAML text → typed [`Bootstrap`] → semantic
//! validation.
//!
//! Parsing goes YAML → `serde_json::Value` → the pbjson (protobuf JSON
//! mapping) deserializers, so the YAML accepts exactly what a control plane
//! would send as JSON: snake_case or lowerCamelCase keys, durations as
//! `"30s"`, enums by value name. Unknown keys are errors. Schema errors name
//! the path of the offending key, e.g.
//! `static_resources.listeners[0].smtp.limts: unknown field "limts", …`.
//! Only the first schema error is reported (serde stops there); semantic
//! errors are all reported.
//!
//! [`validate`] then checks what the schema cannot express (references
//! between resources, addresses, ports, files) and reports *every* problem
//! found, each with the field path in snake_case proto field names, e.g.
//! `static_resources.listeners[1].smtp.tls.cert: file not found: certs/x.pem`.
//!
//! # Pure checks and local checks
//!
//! [`validate`] is two kinds of check, also available on their own:
//!
//! * [`validate_pure`] needs only the config: required fields, oneofs,
//!   unique names and bound addresses, references between resources
//!   (listener → sender → chain → endpoint), socket addresses, host names,
//!   ports, URLs, durations, numbers, enum values, kinds and options not
//!   implemented yet. It never touches the filesystem, so a control plane can run it on
//!   the resources it is about to push (wrapped in the target node's
//!   bootstrap, so paths read `static_resources.…` exactly as the proxy
//!   would report them) and get the same errors the proxy would NACK with,
//!   before pushing anything.
//! * [`check_local`] needs this machine: the files the config names (TLS
//!   `cert`/`key` and endpoint `ca_file` exist, are readable and look like
//!   PEM; AUTH `secrets` exists and is readable), resolved against the
//!   config file's directory. Only the node can answer these (the control
//!   plane does not see its disk), so a pushed config that passes the pure
//!   checks can still be NACKed by one node for a file only it lacks.
//!
//! Maildir and embedded storage paths have only the pure "must be set"
//! check: the proxy creates them when missing, so their absence here is not
//! an error. Deeper node-local checks (a certificate that does not parse, a
//! secrets file with bad JSON) happen when the proxy loads the files; it
//! reports them in the same [`ConfigErrors`] type with
//! [`ConfigError::new`] and [`Problem::Load`].
//!
//! # Relative paths
//!
//! File paths inside a config file (TLS `cert`/`key`, AUTH `secrets`,
//! `ca_file`, maildir `path`, embedded storage `path`) are resolved relative
//! to the directory of the config file, not to the working directory, so a
//! config and the files next to it can be moved together
//! ([`resolve_path`]). The returned [`Bootstrap`] keeps the paths as
//! written; whoever opens the files resolves them with [`resolve_path`].

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::config::v1::{
    Bootstrap, Chain, Destination, Endpoint, HostPort, HttpListener, Listener, MessageParseFilter,
    RestEndpoint, Sender, SmtpListener, StaticResources, TlsMode, chain, endpoint, filter,
    listener, routing_policy, storage,
};

/// The most redirects a `rest` endpoint may follow per request: a chain of
/// redirects longer than this is a loop or a misconfiguration.
pub const MAX_REDIRECTS: u32 = 20;

/// Port used for a nameserver given as a bare IP.
pub const DNS_PORT: u16 = 53;

/// The smallest `max_data_line_length`: RFC 5321 §4.5.3.1.6 requires
/// accepting text lines of 1000 octets including CRLF.
pub const MIN_DATA_LINE_LENGTH: u32 = 1000;

/// How much of a PEM file is read to find its `-----BEGIN` marker. Enough
/// for any certificate chain header; bounded so that a path pointing at a
/// huge file or a device does not stall validation.
const PEM_SNIFF_LEN: u64 = 64 * 1024;

/// One thing wrong with a config, without its location (see
/// [`ConfigError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The config file itself could not be read.
    #[error("cannot read config file: {0}")]
    ReadConfig(String),
    /// Not well-formed YAML (or a duplicate key, an alias bomb, …).
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// Well-formed YAML that does not fit the schema: unknown field, wrong
    /// type, unknown enum value, two members of a oneof set.
    #[error("{0}")]
    Schema(String),
    /// A required string is empty or a required message is absent.
    #[error("must be set")]
    Missing,
    /// None of a oneof's members is set.
    #[error("must set one of: {0}")]
    OneofMissing(&'static str),
    /// A name (or address) that must be unique is used twice.
    #[error("duplicate {kind} {value:?} (also used at {first})")]
    Duplicate {
        kind: &'static str,
        value: String,
        first: String,
    },
    /// Not an `IP:port` socket address.
    #[error("invalid socket address {value:?}: expected IP:port, e.g. 127.0.0.1:2525")]
    BadSocketAddr { value: String },
    /// Not an `IP` or `IP:port`.
    #[error("invalid nameserver {value:?}: expected IP or IP:port, e.g. 127.0.0.1:5353")]
    BadNameserver { value: String },
    /// Not a host name or IP literal, optionally with `:port`.
    #[error(
        "invalid host {value:?}: expected a name or IP, optionally with :port, e.g. koukan-admin.mail.svc"
    )]
    BadHost { value: String },
    /// A port outside 1..=65535.
    #[error("port {0} is out of range 1..=65535")]
    BadPort(u32),
    /// A referenced file does not exist. `value` is the path as written,
    /// `resolved` where it was looked for.
    #[error("file not found: {value}{}", resolved_suffix(.value, .resolved))]
    FileNotFound { value: String, resolved: PathBuf },
    /// A referenced file exists but cannot be read.
    #[error("cannot read file {value}{}: {reason}", resolved_suffix(.value, .resolved))]
    FileUnreadable {
        value: String,
        resolved: PathBuf,
        reason: String,
    },
    /// A file that must be PEM has no `-----BEGIN` line.
    #[error("not a PEM file (no -----BEGIN line): {value}")]
    NotPem { value: String },
    /// A directory the config refers to does not exist (or is a file).
    #[error("not a directory: {value}{}", resolved_suffix(.value, .resolved))]
    NotADirectory { value: String, resolved: PathBuf },
    /// A reply a filter gives that is neither 4xx nor 5xx.
    #[error("must be a 4xx or 5xx reply code, got {0}")]
    BadReplyCode(u32),
    /// One of a pair of fields that go together is set without the other.
    #[error("must be set together with {0}")]
    RequiredWith(&'static str),
    /// `implicit_tls` without a certificate.
    #[error("implicit_tls requires tls (cert and key)")]
    ImplicitTlsWithoutTls,
    /// AUTH configured where it can never be offered: AUTH needs TLS, or
    /// the explicit loopback exception.
    #[error(
        "AUTH is only offered over TLS and this listener has no tls: set tls, \
         or allow_plaintext_on_loopback for local clients"
    )]
    AuthWithoutTls,
    /// A reference to a resource that does not exist.
    #[error("unknown {kind} {name:?}")]
    UnknownRef { kind: &'static str, name: String },
    /// A listener's sender has no chain for the listener's tag.
    #[error("sender {sender:?} has no chain for tag {tag:?} and no default chain")]
    NoChainForTag { sender: String, tag: String },
    /// A sender without a default chain has a tag without a chain too.
    #[error("must be set: tag {tag:?} names no chain")]
    NoDefaultChain { tag: String },
    /// An endpoint of the wrong kind for where it is referenced.
    #[error("endpoint {name:?} is a {found} endpoint, expected {expected}")]
    WrongEndpointKind {
        name: String,
        found: &'static str,
        expected: &'static str,
    },
    /// `host_list` on a destination whose endpoint does not connect to hosts.
    #[error("host_list only applies to smtp endpoints; endpoint {name:?} is {found}")]
    HostListNotApplicable { name: String, found: &'static str },
    /// An SMTP endpoint used without any host to connect to.
    #[error(
        "smtp endpoint {name:?} has no hosts: set host_list on the destination \
         or hosts on the endpoint"
    )]
    NoHosts { name: String },
    /// A sub-address delimiter longer than one character.
    #[error("must be at most one character, got {0:?}")]
    BadDelimiter(String),
    /// A router with both a policy and a static destination: the router
    /// would ignore the destination.
    #[error("is ignored when policy is set; give the policy its own destination")]
    DestinationWithPolicy,
    /// A negative duration.
    #[error("must not be negative")]
    NegativeDuration,
    /// A negative or non-finite number.
    #[error("must be a finite number >= 0")]
    BadNumber,
    /// A non-zero number below the least a standard allows.
    #[error("must be at least {min} ({why}) or 0 for the default, got {value}")]
    BelowMinimum {
        value: u64,
        min: u64,
        why: &'static str,
    },
    /// The chain-level `endpoint` shorthand on a chain that does not relay.
    #[error("only applies to relay chains (it is the relay's default endpoint)")]
    RelayOnly,
    /// The chain-level `endpoint` shorthand beside `relay`.
    #[error("set relay.endpoint instead (endpoint is its shorthand)")]
    EndpointWithRelay,
    /// Store-and-forward without a storage backend.
    #[error("needs `storage` (embedded or redis) in the bootstrap")]
    NeedsStorage,
    /// A resource kind that the schema has but this version does not
    /// implement yet, e.g. an `http` listener. Refused rather than skipped:
    /// a config written for a later version must not start without the
    /// resource it asks for.
    #[error("{resource} kind {kind} is not implemented yet")]
    NotImplemented {
        resource: &'static str,
        kind: &'static str,
    },
    /// A file the config names exists but could not be loaded, e.g. a
    /// certificate that does not parse or a secrets file with bad JSON.
    /// Found outside this crate (by whoever loads the file), which is why
    /// `reason` is the loader's message rather than a typed cause.
    #[error("cannot load {what} {value}: {reason}")]
    Load {
        /// What the file is: "certificate", "private key", "secrets file", …
        what: &'static str,
        /// The path as written in the config.
        value: String,
        reason: String,
    },
    /// Any other problem found outside this crate, as its message.
    #[error("{0}")]
    Invalid(String),
    /// A URL that does not parse or is not one this field takes.
    #[error("invalid URL {value:?}: {reason}")]
    BadUrl { value: String, reason: String },
    /// A number above the most this field allows.
    #[error("must be at most {max}, got {value}")]
    AboveMaximum { value: u64, max: u64 },
    /// An enum number that names no value (possible in binary protobuf).
    #[error("unknown enum value {0}")]
    UnknownEnumValue(i32),
    /// A chain with no way to deliver anything.
    #[error(
        "chain delivers nowhere: add a router with a destination (static, \
         address_list with destination, or dest_domain) or set the chain's endpoint"
    )]
    NoDelivery,
}

/// ` (resolved to …)` when the resolved path differs from the written one.
fn resolved_suffix(value: &str, resolved: &Path) -> String {
    if Path::new(value) == resolved {
        String::new()
    } else {
        format!(" (resolved to {})", resolved.display())
    }
}

/// One problem and where it is: `path` is the field path in snake_case
/// proto field names with `[index]` for list elements (empty for problems
/// with the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub problem: Problem,
}

impl ConfigError {
    /// An error at `path` (snake_case proto field names, `[index]` for list
    /// elements, e.g. `static_resources.listeners[0].smtp.tls.cert`), for
    /// problems found outside this crate.
    pub fn new(path: impl Into<String>, problem: Problem) -> Self {
        Self {
            path: path.into(),
            problem,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.path, self.problem)
        }
    }
}

/// Every problem found in one config file. Displays one line per problem,
/// each prefixed with the file name, e.g.
/// `koukan.yaml: static_resources.listeners[1].smtp.tls.cert: file not found: certs/x.pem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.file, .errors))]
pub struct ConfigErrors {
    pub file: PathBuf,
    /// Never empty; in the order the file was checked.
    pub errors: Vec<ConfigError>,
}

fn render(file: &Path, errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {e}", file.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigErrors {
    /// The errors found in `file`, e.g. by the proxy when it loads the
    /// files a validated config names. `errors` must not be empty (a
    /// `ConfigErrors` means something is wrong): pass errors in the order
    /// of the config, as [`validate`] does.
    pub fn new(file: impl Into<PathBuf>, errors: Vec<ConfigError>) -> Self {
        debug_assert!(!errors.is_empty(), "ConfigErrors without errors");
        Self {
            file: file.into(),
            errors,
        }
    }

    /// One error at `path` in `file`.
    pub fn one(file: impl Into<PathBuf>, path: impl Into<String>, problem: Problem) -> Self {
        Self::new(file, vec![ConfigError::new(path, problem)])
    }

    /// One line per error, `path: problem`, without the file name: for a
    /// control plane's NACK (`error_detail`), where the name of a file on
    /// the node means nothing to whoever pushed the resources.
    pub fn detail(&self) -> String {
        self.errors
            .iter()
            .map(ConfigError::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The field path of every error, in order (empty for errors with the
    /// file as a whole), e.g. to tell which resources a NACK is about.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.errors.iter().map(|e| e.path.as_str())
    }
}

/// Resolves a path written in the config file `config_file`: absolute
/// paths are kept, relative ones are taken relative to the config file's
/// directory (so `certs/mx.pem` in `/etc/koukan/koukan.yaml` is
/// `/etc/koukan/certs/mx.pem`, and `data/maildir` in
/// `configs/quickstart.yaml` is `configs/data/maildir`).
pub fn resolve_path(config_file: &Path, value: &str) -> PathBuf {
    let value = Path::new(value);
    if value.is_absolute() {
        return value.to_owned();
    }
    match config_file.parent() {
        Some(dir) => dir.join(value),
        None => value.to_owned(),
    }
}

/// Parses a nameserver as written in `dns.nameservers`: `IP:port`, or a
/// bare IP meaning port 53.
pub fn parse_nameserver(value: &str) -> Option<SocketAddr> {
    value.parse::<SocketAddr>().ok().or_else(|| {
        value
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, DNS_PORT))
    })
}

/// Checks a URL an HTTP client is to send to: `http` or `https`, with a
/// host, without user name or password (the URL shows in replies and
/// logs) or fragment. Returns why not.
pub fn check_http_url(value: &str) -> Result<(), String> {
    let url = url::Url::parse(value).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?}: expected http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials in the URL are not supported (they would show in replies and logs)".into(),
        );
    }
    if url.fragment().is_some() {
        return Err("a fragment (#...) means nothing to a server".into());
    }
    Ok(())
}

/// Parses YAML text into a [`Bootstrap`] without semantic checks.
/// `file_name` only labels errors. An empty document is an empty
/// bootstrap (which [`validate`] then rejects for its missing `node`).
pub fn parse_bootstrap(file_name: &Path, yaml: &str) -> Result<Bootstrap, ConfigErrors> {
    let value: serde_json::Value = serde_saphyr::from_str(yaml).map_err(|e| {
        // The plain message ("line 2 column 6: …"); the default rendering
        // adds a multi-line source snippet.
        let plain = e.render_with_options(serde_saphyr::render_options! {
            snippets: serde_saphyr::SnippetMode::Off,
        });
        ConfigErrors::one(file_name, "", Problem::Yaml(one_line(&plain)))
    })?;
    let value = match value {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        v => v,
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        // The path of the root is "."; report it as no path.
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigErrors::one(file_name, path, Problem::Schema(e.into_inner().to_string()))
    })
}

/// Keeps the one-error-per-line format should a message span lines.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads, parses and validates the bootstrap file at `path`. Relative paths
/// inside it are checked relative to its directory; the returned value
/// keeps them as written (see [`resolve_path`]).
pub fn load_bootstrap_file(path: &Path) -> Result<Bootstrap, ConfigErrors> {
    let yaml = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one(path, "", Problem::ReadConfig(e.to_string())))?;
    let bootstrap = parse_bootstrap(path, &yaml)?;
    validate(path, &bootstrap)?;
    Ok(bootstrap)
}

/// Checks everything the schema cannot: [`validate_pure`] and
/// [`check_local`] together, with their errors interleaved in the order of
/// the config (a listener's missing certificate comes before the next
/// listener's bad address). Reports every problem, not just the first.
/// `file_name` labels errors and anchors relative paths
/// ([`resolve_path`]).
pub fn validate(file_name: &Path, bootstrap: &Bootstrap) -> Result<(), ConfigErrors> {
    let errors = walk(bootstrap)
        .into_iter()
        .filter_map(|f| match f {
            Finding::Error(e) => Some(e),
            Finding::File(c) => c.run(file_name),
        })
        .collect();
    errors_in(file_name, errors)
}

/// The checks that need only the config (see the [module docs](self)):
/// never touches the filesystem, so a control plane can run it on what it
/// pushes. Paths are the same as [`validate`]'s; there is no file name, so
/// the errors are bare [`ConfigError`]s ([`ConfigErrors::new`] adds one).
pub fn validate_pure(bootstrap: &Bootstrap) -> Result<(), Vec<ConfigError>> {
    let errors: Vec<_> = walk(bootstrap)
        .into_iter()
        .filter_map(|f| match f {
            Finding::Error(e) => Some(e),
            Finding::File(_) => None,
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The checks that need this machine (see the [module docs](self)): the
/// files the config names, relative paths resolved against `file_name`'s
/// directory ([`resolve_path`]). Checks only files that are named: a
/// config with a pure error (say, a missing `secrets`) has nothing to check
/// there, and that error is [`validate_pure`]'s to report.
pub fn check_local(file_name: &Path, bootstrap: &Bootstrap) -> Result<(), ConfigErrors> {
    let errors = walk(bootstrap)
        .into_iter()
        .filter_map(|f| match f {
            Finding::Error(_) => None,
            Finding::File(c) => c.run(file_name),
        })
        .collect();
    errors_in(file_name, errors)
}

/// `http(s)://host[:port][/prefix]`, nothing after the path: what a
/// listener's `session_uri` must be for `Location` headers built from it
/// to be URLs.
fn is_base_url(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    !authority.is_empty()
        && !s.contains(['?', '#', ' ', '\\'])
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

fn errors_in(file_name: &Path, errors: Vec<ConfigError>) -> Result<(), ConfigErrors> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors::new(file_name, errors))
    }
}

/// Walks the config once, in file order, without touching the filesystem:
/// the pure errors, and the file checks for [`check_local`] at the place
/// they come in the config. One walk serves all three entry points, so
/// [`validate`] keeps the interleaved order and the two halves cannot
/// drift apart in which fields they visit.
fn walk(bootstrap: &Bootstrap) -> Vec<Finding> {
    let mut v = Validator {
        findings: Vec::new(),
        addresses: HashMap::new(),
    };
    v.bootstrap(bootstrap);
    v.findings
}

/// What the walk finds at one place in the config.
enum Finding {
    /// A pure error.
    Error(ConfigError),
    /// A file to check on this machine.
    File(FileCheck),
}

/// A file named by the config, to be checked where the config is used.
struct FileCheck {
    /// Field path of the file name.
    path: String,
    /// The file name as written.
    value: String,
    /// Must it look like PEM?
    pem: bool,
    /// A directory rather than a file.
    dir: bool,
}

impl FileCheck {
    /// Runs the check against the file as resolved from `config_file`.
    fn run(self, config_file: &Path) -> Option<ConfigError> {
        if self.dir {
            let resolved = resolve_path(config_file, &self.value);
            return (!resolved.is_dir()).then(|| {
                ConfigError::new(
                    self.path,
                    Problem::NotADirectory {
                        value: self.value,
                        resolved,
                    },
                )
            });
        }
        let problem = match sniff_file(config_file, &self.value) {
            Err(p) => p,
            // A cheap PEM check: full parsing is the TLS layer's job, but a
            // DER file or a swapped path is caught here with a clear
            // message.
            Ok(buf) if self.pem && !buf.windows(PEM_BEGIN.len()).any(|w| w == PEM_BEGIN) => {
                Problem::NotPem { value: self.value }
            }
            Ok(_) => return None,
        };
        Some(ConfigError::new(self.path, problem))
    }
}

const PEM_BEGIN: &[u8] = b"-----BEGIN";

/// Reads the start of a file the config refers to, or says why it cannot.
fn sniff_file(config_file: &Path, value: &str) -> Result<Vec<u8>, Problem> {
    let resolved = resolve_path(config_file, value);
    let result = std::fs::File::open(&resolved).and_then(|f| {
        let mut buf = Vec::new();
        f.take(PEM_SNIFF_LEN).read_to_end(&mut buf)?;
        Ok(buf)
    });
    result.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Problem::FileNotFound {
                value: value.to_owned(),
                resolved,
            }
        } else {
            Problem::FileUnreadable {
                value: value.to_owned(),
                resolved,
                reason: e.to_string(),
            }
        }
    })
}

/// What a name refers to, for reference checks.
struct Named<'a, T> {
    path: String,
    value: &'a T,
}

/// Index of resources by name; the first of duplicates wins (duplicates
/// are reported separately).
struct Index<'a, T>(HashMap<&'a str, Named<'a, T>>);

impl<'a, T> Index<'a, T> {
    fn get(&self, name: &str) -> Option<&'a T> {
        self.0.get(name).map(|n| n.value)
    }
}

/// The pure walk. It has no config file name, so it cannot open files:
/// it only records which ones [`check_local`] should look at.
struct Validator {
    findings: Vec<Finding>,
    /// Socket addresses bound so far (admin, listeners) → where.
    addresses: HashMap<SocketAddr, String>,
}

fn endpoint_kind(e: &Endpoint) -> &'static str {
    match e.endpoint {
        Some(endpoint::Endpoint::Smtp(_)) => "smtp",
        Some(endpoint::Endpoint::Maildir(_)) => "maildir",
        Some(endpoint::Endpoint::Rest(_)) => "rest",
        None => "unset",
    }
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, problem: Problem) {
        self.findings
            .push(Finding::Error(ConfigError::new(path, problem)));
    }

    fn required(&mut self, path: impl Into<String>, value: &str) -> bool {
        if value.is_empty() {
            self.err(path, Problem::Missing);
            false
        } else {
            true
        }
    }

    fn bootstrap(&mut self, b: &Bootstrap) {
        match &b.node {
            Some(node) => {
                self.required("node.id", &node.id);
            }
            None => self.err("node", Problem::Missing),
        }
        if let Some(admin) = &b.admin
            && self.required("admin.address", &admin.address)
        {
            self.bind_address("admin.address", &admin.address);
        }
        if let Some(admin) = &b.admin {
            for (i, h) in admin.allowed_hosts.iter().enumerate() {
                let bad = h.is_empty()
                    || !h
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"-.:[]_".contains(&c));
                if bad {
                    self.err(
                        format!("admin.allowed_hosts[{i}]"),
                        Problem::BadHost { value: h.clone() },
                    );
                }
            }
        }
        if let Some(s) = &b.storage {
            match &s.backend {
                Some(storage::Backend::Embedded(e)) => {
                    self.required("storage.embedded.path", &e.path);
                }
                Some(storage::Backend::Redis(r)) => {
                    self.required("storage.redis.url", &r.url);
                }
                None => self.err("storage", Problem::OneofMissing("embedded, redis")),
            }
        }
        if let Some(sc) = &b.scheduler {
            self.duration("scheduler.lease_ttl", &sc.lease_ttl);
            self.duration("scheduler.poll_interval", &sc.poll_interval);
            self.duration("scheduler.gc_ttl", &sc.gc_ttl);
            self.duration("scheduler.gc_interval", &sc.gc_interval);
        }
        if let Some(dns) = &b.dns {
            for (i, ns) in dns.nameservers.iter().enumerate() {
                if parse_nameserver(ns).is_none() {
                    self.err(
                        format!("dns.nameservers[{i}]"),
                        Problem::BadNameserver { value: ns.clone() },
                    );
                }
            }
        }
        if let Some(r) = &b.static_resources {
            self.static_resources(r, b.storage.is_some());
        }
    }

    /// Parses a socket address to bind and checks it is not bound twice.
    fn bind_address(&mut self, path: &str, value: &str) {
        match value.parse::<SocketAddr>() {
            Ok(addr) => {
                if let Some(first) = self.addresses.get(&addr) {
                    let first = first.clone();
                    self.err(
                        path,
                        Problem::Duplicate {
                            kind: "address",
                            value: value.to_owned(),
                            first,
                        },
                    );
                } else {
                    self.addresses.insert(addr, path.to_owned());
                }
            }
            Err(_) => self.err(
                path,
                Problem::BadSocketAddr {
                    value: value.to_owned(),
                },
            ),
        }
    }

    /// Builds a name index of `items`, reporting empty and duplicate names.
    fn index<'a, T>(
        &mut self,
        kind: &'static str,
        list_path: &str,
        items: &'a [T],
        name: impl Fn(&T) -> &str,
    ) -> Index<'a, T> {
        let mut index: HashMap<&'a str, Named<'a, T>> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("{list_path}[{i}]");
            let n = name(item);
            if !self.required(format!("{path}.name"), n) {
                continue;
            }
            if let Some(first) = index.get(n) {
                let first = first.path.clone();
                self.err(
                    format!("{path}.name"),
                    Problem::Duplicate {
                        kind,
                        value: n.to_owned(),
                        first,
                    },
                );
            } else {
                index.insert(n, Named { path, value: item });
            }
        }
        Index(index)
    }

    /// Store-and-forward, retries and bounces of one chain.
    fn delivery(
        &mut self,
        path: &str,
        c: &Chain,
        chains: &Index<'_, Chain>,
        storage_configured: bool,
    ) {
        match &c.delivery {
            Some(chain::Delivery::StoreAndForward(sf)) => {
                let op = format!("{path}.store_and_forward.output_chain");
                if self.required(&op, &sf.output_chain) {
                    self.chain_ref(&op, &sf.output_chain, chains);
                }
                if !storage_configured {
                    self.err(format!("{path}.store_and_forward"), Problem::NeedsStorage);
                }
                if !c.endpoint.is_empty() {
                    self.err(format!("{path}.endpoint"), Problem::RelayOnly);
                }
            }
            Some(chain::Delivery::Exploder(x)) => {
                let xp = format!("{path}.exploder");
                let op = format!("{xp}.output_chain");
                if self.required(&op, &x.output_chain) {
                    self.chain_ref(&op, &x.output_chain, chains);
                }
                self.duration(&format!("{xp}.rcpt_timeout"), &x.rcpt_timeout);
                self.duration(&format!("{xp}.data_timeout"), &x.data_timeout);
                if !storage_configured {
                    self.err(xp.clone(), Problem::NeedsStorage);
                }
                if !c.endpoint.is_empty() {
                    self.err(format!("{path}.endpoint"), Problem::RelayOnly);
                }
            }
            Some(chain::Delivery::Relay(_)) if !c.endpoint.is_empty() => {
                self.err(format!("{path}.endpoint"), Problem::EndpointWithRelay);
            }
            Some(chain::Delivery::Relay(_)) | None => {}
        }
        if let Some(r) = &c.retry {
            let rp = format!("{path}.retry");
            self.duration(&format!("{rp}.min_attempt_time"), &r.min_attempt_time);
            self.duration(&format!("{rp}.max_attempt_time"), &r.max_attempt_time);
            self.duration(&format!("{rp}.deadline"), &r.deadline);
            if r.backoff_factor < 0.0 || !r.backoff_factor.is_finite() {
                self.err(format!("{rp}.backoff_factor"), Problem::BadNumber);
            }
        }
        if let Some(n) = &c.notification {
            let np = format!("{path}.notification.chain");
            if self.required(&np, &n.chain) {
                self.chain_ref(&np, &n.chain, chains);
            }
        }
    }

    fn static_resources(&mut self, r: &StaticResources, storage_configured: bool) {
        const SR: &str = "static_resources";
        let listeners = format!("{SR}.listeners");
        let senders_path = format!("{SR}.senders");
        let chains_path = format!("{SR}.chains");
        let endpoints_path = format!("{SR}.endpoints");
        // Listener names are only checked for uniqueness: nothing refers
        // to a listener.
        self.index("listener name", &listeners, &r.listeners, |l| &l.name);
        let senders = self.index("sender name", &senders_path, &r.senders, |s| &s.name);
        let chains = self.index("chain name", &chains_path, &r.chains, |c| &c.name);
        let endpoints = self.index("endpoint name", &endpoints_path, &r.endpoints, |e| &e.name);

        for (i, l) in r.listeners.iter().enumerate() {
            self.listener(
                &format!("{listeners}[{i}]"),
                l,
                &senders,
                storage_configured,
            );
        }
        for (i, s) in r.senders.iter().enumerate() {
            self.sender(&format!("{senders_path}[{i}]"), s, &chains);
        }
        for (i, c) in r.chains.iter().enumerate() {
            let path = format!("{chains_path}[{i}]");
            self.chain(&path, c, &endpoints);
            self.delivery(&path, c, &chains, storage_configured);
        }
        for (i, e) in r.endpoints.iter().enumerate() {
            self.endpoint(&format!("{endpoints_path}[{i}]"), e);
        }
    }

    fn listener(
        &mut self,
        path: &str,
        l: &Listener,
        senders: &Index<'_, Sender>,
        storage_configured: bool,
    ) {
        if self.required(format!("{path}.address"), &l.address) {
            self.bind_address(&format!("{path}.address"), &l.address);
        }
        match &l.protocol {
            Some(listener::Protocol::Smtp(s)) => {
                self.smtp_listener(&format!("{path}.smtp"), s, senders)
            }
            Some(listener::Protocol::Http(h)) => {
                let hp = format!("{path}.http");
                if !storage_configured {
                    self.err(hp.clone(), Problem::NeedsStorage);
                }
                self.http_listener(&hp, &l.address, h, senders);
            }
            None => self.err(path, Problem::OneofMissing("smtp, http")),
        }
    }

    fn http_listener(
        &mut self,
        path: &str,
        address: &str,
        h: &HttpListener,
        senders: &Index<'_, Sender>,
    ) {
        for (field, uri) in [
            ("session_uri", &h.session_uri),
            ("service_uri", &h.service_uri),
        ] {
            if !uri.is_empty() && !is_base_url(uri) {
                self.err(
                    format!("{path}.{field}"),
                    Problem::Invalid(format!(
                        "{uri:?} is not a base URL: expected http(s)://host[:port][/prefix]"
                    )),
                );
            }
        }
        for (i, s) in h.senders.iter().enumerate() {
            if senders.get(s).is_none() {
                self.err(
                    format!("{path}.senders[{i}]"),
                    Problem::UnknownRef {
                        kind: "sender",
                        name: s.clone(),
                    },
                );
            }
        }
        if let Some(tls) = &h.tls {
            let tp = format!("{path}.tls");
            match (tls.cert.is_empty(), tls.key.is_empty()) {
                (false, false) => {
                    self.pem_file(&format!("{tp}.cert"), &tls.cert);
                    self.pem_file(&format!("{tp}.key"), &tls.key);
                }
                (true, false) => self.err(format!("{tp}.cert"), Problem::RequiredWith("key")),
                (false, true) => self.err(format!("{tp}.key"), Problem::RequiredWith("cert")),
                (true, true) => {}
            }
        }
        if h.api_keys.is_empty() {
            let loopback = address
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback());
            if !loopback && !h.allow_unauthenticated {
                self.err(
                    format!("{path}.api_keys"),
                    Problem::Invalid(
                        "must be set for a listener that is not on a loopback address \
                         (or set allow_unauthenticated behind an authenticating proxy)"
                            .into(),
                    ),
                );
            }
        } else {
            self.file_check(&format!("{path}.api_keys"), &h.api_keys, false);
        }
        self.duration(&format!("{path}.idempotency_window"), &h.idempotency_window);
        if let Some(lim) = &h.limits {
            let lp = format!("{path}.limits");
            self.duration(
                &format!("{lp}.max_request_timeout"),
                &lim.max_request_timeout,
            );
            self.duration(&format!("{lp}.pending_timeout"), &lim.pending_timeout);
            if lim.max_header_bytes != 0 && lim.max_header_bytes < 8192 {
                self.err(
                    format!("{lp}.max_header_bytes"),
                    Problem::BelowMinimum {
                        min: 8192,
                        why: "the HTTP server's smallest read buffer",
                        value: u64::from(lim.max_header_bytes),
                    },
                );
            }
        }
    }

    fn smtp_listener(&mut self, path: &str, s: &SmtpListener, senders: &Index<'_, Sender>) {
        if self.required(format!("{path}.sender"), &s.sender) {
            match senders.get(&s.sender) {
                None => self.err(
                    format!("{path}.sender"),
                    Problem::UnknownRef {
                        kind: "sender",
                        name: s.sender.clone(),
                    },
                ),
                Some(sender) => {
                    // Mail from this listener must find a chain; catching
                    // it here beats rejecting every transaction at runtime.
                    let tag_chain = sender
                        .tags
                        .iter()
                        .find(|t| t.name == s.tag)
                        .is_some_and(|t| !t.chain.is_empty());
                    if !tag_chain && sender.chain.is_empty() {
                        self.err(
                            format!("{path}.tag"),
                            Problem::NoChainForTag {
                                sender: s.sender.clone(),
                                tag: s.tag.clone(),
                            },
                        );
                    }
                }
            }
        }

        // An empty `tls: {}` is the same as no TLS; only half a pair is
        // an error.
        let has_tls = match &s.tls {
            Some(tls) => {
                let tp = format!("{path}.tls");
                match (tls.cert.is_empty(), tls.key.is_empty()) {
                    (false, false) => {
                        self.pem_file(&format!("{tp}.cert"), &tls.cert);
                        self.pem_file(&format!("{tp}.key"), &tls.key);
                        true
                    }
                    (true, false) => {
                        self.err(format!("{tp}.cert"), Problem::RequiredWith("key"));
                        true
                    }
                    (false, true) => {
                        self.err(format!("{tp}.key"), Problem::RequiredWith("cert"));
                        true
                    }
                    (true, true) => false,
                }
            }
            None => false,
        };
        if s.implicit_tls && !has_tls {
            self.err(
                format!("{path}.implicit_tls"),
                Problem::ImplicitTlsWithoutTls,
            );
        }

        if let Some(auth) = &s.auth {
            let ap = format!("{path}.auth");
            if self.required(format!("{ap}.secrets"), &auth.secrets) {
                self.readable_file(&format!("{ap}.secrets"), &auth.secrets);
            }
            if let Some(f) = &auth.failure_limits {
                let fp = format!("{ap}.failure_limits");
                self.duration(&format!("{fp}.window"), &f.window);
                self.duration(&format!("{fp}.lockout"), &f.lockout);
                self.duration(&format!("{fp}.delay"), &f.delay);
                self.duration(&format!("{fp}.max_delay"), &f.max_delay);
            }
            if !has_tls && !auth.allow_plaintext_on_loopback {
                self.err(ap, Problem::AuthWithoutTls);
            }
        }

        if let Some(limits) = &s.limits {
            let lp = format!("{path}.limits");
            self.duration(&format!("{lp}.command_timeout"), &limits.command_timeout);
            self.duration(&format!("{lp}.data_timeout"), &limits.data_timeout);
            self.duration(&format!("{lp}.drain_timeout"), &limits.drain_timeout);
            let n = limits.max_data_line_length;
            if n != 0 && n < MIN_DATA_LINE_LENGTH {
                self.err(
                    format!("{lp}.max_data_line_length"),
                    Problem::BelowMinimum {
                        value: n.into(),
                        min: MIN_DATA_LINE_LENGTH.into(),
                        why: "RFC 5321 section 4.5.3.1.6",
                    },
                );
            }
        }
    }

    fn sender(&mut self, path: &str, s: &Sender, chains: &Index<'_, Chain>) {
        let mut tag_names: HashMap<&str, String> = HashMap::new();
        for (i, t) in s.tags.iter().enumerate() {
            let tp = format!("{path}.tags[{i}]");
            if t.name.is_empty() {
                self.err(format!("{tp}.name"), Problem::Missing);
            } else if let Some(first) = tag_names.get(t.name.as_str()) {
                let first = first.clone();
                self.err(
                    format!("{tp}.name"),
                    Problem::Duplicate {
                        kind: "tag name",
                        value: t.name.clone(),
                        first,
                    },
                );
            } else {
                tag_names.insert(&t.name, tp.clone());
            }
            if t.chain.is_empty() {
                if s.chain.is_empty() {
                    self.err(
                        format!("{path}.chain"),
                        Problem::NoDefaultChain {
                            tag: t.name.clone(),
                        },
                    );
                }
            } else {
                self.chain_ref(&format!("{tp}.chain"), &t.chain, chains);
            }
        }
        if s.chain.is_empty() {
            if s.tags.is_empty() {
                self.err(format!("{path}.chain"), Problem::Missing);
            }
        } else {
            self.chain_ref(&format!("{path}.chain"), &s.chain, chains);
        }
    }

    fn chain_ref(&mut self, path: &str, name: &str, chains: &Index<'_, Chain>) {
        if chains.get(name).is_none() {
            self.err(
                path,
                Problem::UnknownRef {
                    kind: "chain",
                    name: name.to_owned(),
                },
            );
        }
    }

    fn chain(&mut self, path: &str, c: &Chain, endpoints: &Index<'_, Endpoint>) {
        let mut delivers = false;
        let mut filter_names: HashMap<&str, String> = HashMap::new();
        for (i, f) in c.filters.iter().enumerate() {
            let fp = format!("{path}.filters[{i}]");
            if !f.name.is_empty() {
                if let Some(first) = filter_names.get(f.name.as_str()) {
                    let first = first.clone();
                    self.err(
                        format!("{fp}.name"),
                        Problem::Duplicate {
                            kind: "filter name",
                            value: f.name.clone(),
                            first,
                        },
                    );
                } else {
                    filter_names.insert(&f.name, fp.clone());
                }
            }
            match &f.filter {
                Some(filter::Filter::Router(r)) => {
                    let rp = format!("{fp}.router");
                    match r.policy.as_ref() {
                        Some(p) => {
                            if r.destination.is_some() {
                                self.err(
                                    format!("{rp}.destination"),
                                    Problem::DestinationWithPolicy,
                                );
                            }
                            let pp = format!("{rp}.policy");
                            match &p.policy {
                                Some(routing_policy::Policy::AddressList(a)) => {
                                    let ap = format!("{pp}.address_list");
                                    for (j, d) in a.domains.iter().enumerate() {
                                        self.required(format!("{ap}.domains[{j}]"), d);
                                    }
                                    for (j, d) in a.prefixes.iter().enumerate() {
                                        self.required(format!("{ap}.prefixes[{j}]"), d);
                                    }
                                    if a.delimiter.chars().count() > 1 {
                                        self.err(
                                            format!("{ap}.delimiter"),
                                            Problem::BadDelimiter(a.delimiter.clone()),
                                        );
                                    }
                                    if let Some(d) = &a.destination {
                                        delivers = true;
                                        self.destination(
                                            &format!("{ap}.destination"),
                                            d,
                                            endpoints,
                                        );
                                    }
                                }
                                Some(routing_policy::Policy::DestDomain(d)) => {
                                    delivers = true;
                                    let dp = format!("{pp}.dest_domain");
                                    if d.dest_port > u32::from(u16::MAX) {
                                        self.err(
                                            format!("{dp}.dest_port"),
                                            Problem::BadPort(d.dest_port),
                                        );
                                    }
                                    let ep = format!("{dp}.endpoint");
                                    if self.required(&ep, &d.endpoint) {
                                        // MX routing needs a client that
                                        // connects to hosts.
                                        match endpoints.get(&d.endpoint) {
                                            None => self.unknown_endpoint(&ep, &d.endpoint),
                                            Some(e) if endpoint_kind(e) != "smtp" => self.err(
                                                ep,
                                                Problem::WrongEndpointKind {
                                                    name: d.endpoint.clone(),
                                                    found: endpoint_kind(e),
                                                    expected: "smtp",
                                                },
                                            ),
                                            Some(_) => {}
                                        }
                                    }
                                }
                                None => {
                                    self.err(pp, Problem::OneofMissing("address_list, dest_domain"))
                                }
                            }
                        }
                        None => {
                            if let Some(d) = &r.destination {
                                delivers = true;
                                self.destination(&format!("{rp}.destination"), d, endpoints);
                            }
                        }
                    }
                }
                Some(filter::Filter::ReceivedHeader(_)) => {}
                Some(filter::Filter::MessageParse(m)) => {
                    self.message_parse(&format!("{fp}.message_parse"), m)
                }
                None => self.err(
                    fp,
                    Problem::OneofMissing("router, received_header, message_parse"),
                ),
            }
        }
        // The relay's endpoint for unrouted recipients, as `relay.endpoint`
        // or its chain-level shorthand.
        let relay_endpoint = match &c.delivery {
            Some(chain::Delivery::Relay(r)) => {
                Some((format!("{path}.relay.endpoint"), &r.endpoint))
            }
            None => Some((format!("{path}.endpoint"), &c.endpoint)),
            _ => None,
        };
        // Store-and-forward and exploder chains deliver into storage or
        // their output chain.
        if let Some((ep, name)) = relay_endpoint {
            if !name.is_empty() {
                delivers = true;
                match endpoints.get(name) {
                    None => self.unknown_endpoint(&ep, name),
                    Some(e) => self.endpoint_has_hosts(&ep, e),
                }
            }
            if !delivers {
                self.err(path, Problem::NoDelivery);
            }
        }
    }

    fn unknown_endpoint(&mut self, path: &str, name: &str) {
        self.err(
            path,
            Problem::UnknownRef {
                kind: "endpoint",
                name: name.to_owned(),
            },
        );
    }

    /// An SMTP endpoint reached without a host list of its own must have
    /// `hosts`.
    fn endpoint_has_hosts(&mut self, path: &str, e: &Endpoint) {
        if let Some(endpoint::Endpoint::Smtp(s)) = &e.endpoint
            && s.hosts.is_empty()
        {
            self.err(
                path,
                Problem::NoHosts {
                    name: e.name.clone(),
                },
            );
        }
    }

    fn destination(&mut self, path: &str, d: &Destination, endpoints: &Index<'_, Endpoint>) {
        let ep = format!("{path}.endpoint");
        if self.required(&ep, &d.endpoint) {
            match endpoints.get(&d.endpoint) {
                None => self.unknown_endpoint(&ep, &d.endpoint),
                Some(e) if d.host_list.is_empty() => self.endpoint_has_hosts(&ep, e),
                Some(e) if endpoint_kind(e) != "smtp" => self.err(
                    format!("{path}.host_list"),
                    Problem::HostListNotApplicable {
                        name: d.endpoint.clone(),
                        found: endpoint_kind(e),
                    },
                ),
                Some(_) => {}
            }
        }
        self.host_ports(&format!("{path}.host_list"), &d.host_list);
    }

    fn host_ports(&mut self, path: &str, list: &[HostPort]) {
        for (i, h) in list.iter().enumerate() {
            self.required(format!("{path}[{i}].host"), &h.host);
            if !(1..=u32::from(u16::MAX)).contains(&h.port) {
                self.err(format!("{path}[{i}].port"), Problem::BadPort(h.port));
            }
        }
    }

    fn endpoint(&mut self, path: &str, e: &Endpoint) {
        match &e.endpoint {
            Some(endpoint::Endpoint::Smtp(s)) => {
                let sp = format!("{path}.smtp");
                self.required(format!("{sp}.ehlo_hostname"), &s.ehlo_hostname);
                self.host_ports(&format!("{sp}.hosts"), &s.hosts);
                if TlsMode::try_from(s.tls).is_err() {
                    self.err(format!("{sp}.tls"), Problem::UnknownEnumValue(s.tls));
                }
                if !s.ca_file.is_empty() {
                    self.pem_file(&format!("{sp}.ca_file"), &s.ca_file);
                }
                self.duration(&format!("{sp}.connect_timeout"), &s.connect_timeout);
                self.duration(&format!("{sp}.command_timeout"), &s.command_timeout);
                self.duration(&format!("{sp}.data_timeout"), &s.data_timeout);
                if let Some(r) = &s.connection_reuse {
                    self.duration(
                        &format!("{sp}.connection_reuse.idle_timeout"),
                        &r.idle_timeout,
                    );
                }
            }
            Some(endpoint::Endpoint::Maildir(m)) => {
                self.required(format!("{path}.maildir.path"), &m.path);
            }
            Some(endpoint::Endpoint::Rest(r)) => self.rest_endpoint(&format!("{path}.rest"), r),
            None => self.err(path, Problem::OneofMissing("smtp, maildir, rest")),
        }
    }

    fn rest_endpoint(&mut self, path: &str, r: &RestEndpoint) {
        let up = format!("{path}.url");
        if self.required(&up, &r.url)
            && let Err(reason) = check_http_url(&r.url)
        {
            self.err(
                up,
                Problem::BadUrl {
                    value: r.url.clone(),
                    reason,
                },
            );
        }
        if r.sender_name.is_empty() && !r.sender_tag.is_empty() {
            self.err(
                format!("{path}.sender_name"),
                Problem::RequiredWith("sender_tag"),
            );
        }
        self.duration(&format!("{path}.rcpt_timeout"), &r.rcpt_timeout);
        self.duration(&format!("{path}.data_timeout"), &r.data_timeout);
        if !r.ca_file.is_empty() {
            self.pem_file(&format!("{path}.ca_file"), &r.ca_file);
        }
        if let Some(n) = r.max_redirects
            && n > MAX_REDIRECTS
        {
            self.err(
                format!("{path}.max_redirects"),
                Problem::AboveMaximum {
                    value: n.into(),
                    max: MAX_REDIRECTS.into(),
                },
            );
        }
    }

    fn duration(&mut self, path: &str, d: &Option<pbjson_types::Duration>) {
        if let Some(d) = d
            && (d.seconds < 0 || d.nanos < 0)
        {
            self.err(path, Problem::NegativeDuration);
        }
    }

    fn message_parse(&mut self, path: &str, m: &MessageParseFilter) {
        if let Some(r) = &m.reject
            && !(400..=599).contains(&r.code)
        {
            self.err(format!("{path}.reject.code"), Problem::BadReplyCode(r.code));
        }
        if !m.spool_dir.is_empty() {
            self.findings.push(Finding::File(FileCheck {
                path: format!("{path}.spool_dir"),
                value: m.spool_dir.clone(),
                pem: false,
                dir: true,
            }));
        }
    }

    /// A file that must exist and be readable, checked by [`check_local`].
    fn readable_file(&mut self, path: &str, value: &str) {
        self.file_check(path, value, false);
    }

    /// A file that must also look like PEM, checked by [`check_local`].
    fn pem_file(&mut self, path: &str, value: &str) {
        self.file_check(path, value, true);
    }

    fn file_check(&mut self, path: &str, value: &str, pem: bool) {
        self.findings.push(Finding::File(FileCheck {
            path: path.to_owned(),
            value: value.to_owned(),
            pem,
            dir: false,
        }));
    }
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
