use std::path::{Path, PathBuf};

use super::*;
use crate::config::v1::{AddressListPolicy, DestDomainPolicy};
use crate::config::v1::{
    Admin, Dns, EmbeddedStorage, Filter, HostPort, MaildirEndpoint, Node, ReceivedHeaderFilter,
    RouterFilter, RoutingPolicy, SenderTag, SmtpAuth, SmtpEndpoint, SmtpLimits, Storage, Tls,
    filter, routing_policy,
};
use crate::config::v1::{Notification, RedisStorage, Relay, RetryParams, StoreAndForward};

/// The quickstart shape: one SMTP listener, one sender, a chain with
/// received_header and two routers, a maildir endpoint.
const QUICKSTART: &str = r#"
node:
  id: test
admin:
  address: 127.0.0.1:9901
storage:
  embedded:
    path: data/koukan.db
static_resources:
  listeners:
  - name: smtp
    address: 127.0.0.1:2525
    smtp:
      hostname: localhost
      sender: smtp-in
  senders:
  - name: smtp-in
    chain: inbound
  chains:
  - name: inbound
    filters:
    - received_header:
        received_hostname: localhost
    - router:
        policy:
          address_list:
            domains: [example.com]
            destination:
              endpoint: local-maildir
    - router: {}
  endpoints:
  - name: local-maildir
    maildir:
      path: data/maildir
"#;

/// A config file name in a fresh directory, for checks of relative paths.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("koukan.yaml")
    }
    /// Creates `name` (relative to the config's directory) with `content`.
    fn file(&self, name: &str, content: &str) {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn parse(yaml: &str) -> Result<Bootstrap, ConfigErrors> {
    parse_bootstrap(Path::new("koukan.yaml"), yaml)
}

fn quickstart() -> Bootstrap {
    parse(QUICKSTART).expect("quickstart parses")
}

fn res(b: &mut Bootstrap) -> &mut StaticResources {
    b.static_resources.as_mut().unwrap()
}

fn smtp_listener(b: &mut Bootstrap, i: usize) -> &mut SmtpListener {
    match res(b).listeners[i].protocol.as_mut().unwrap() {
        listener::Protocol::Smtp(s) => s,
        other => panic!("not an smtp listener: {other:?}"),
    }
}

fn router(b: &mut Bootstrap, chain: usize, f: usize) -> &mut RouterFilter {
    match res(b).chains[chain].filters[f].filter.as_mut().unwrap() {
        filter::Filter::Router(r) => r,
        other => panic!("not a router: {other:?}"),
    }
}

fn smtp_endpoint(name: &str, hosts: Vec<HostPort>) -> Endpoint {
    Endpoint {
        name: name.into(),
        endpoint: Some(endpoint::Endpoint::Smtp(SmtpEndpoint {
            ehlo_hostname: "mx.example.com".into(),
            hosts,
            ..Default::default()
        })),
    }
}

fn hp(host: &str, port: u32) -> HostPort {
    HostPort {
        host: host.into(),
        port,
    }
}

/// Validates `b` as if read from `dir`'s config file; returns the errors as
/// (path, problem) pairs.
fn check_in(dir: &Dir, b: &Bootstrap) -> Vec<(String, Problem)> {
    match validate(&dir.config(), b) {
        Ok(()) => vec![],
        Err(e) => {
            assert_eq!(e.file, dir.config());
            assert!(!e.errors.is_empty());
            e.errors.into_iter().map(|e| (e.path, e.problem)).collect()
        }
    }
}

fn check(b: &Bootstrap) -> Vec<(String, Problem)> {
    check_in(&Dir::new(), b)
}

/// Asserts that validation reports exactly one error, at `path`.
fn only_error(b: &Bootstrap, path: &str) -> Problem {
    let errs = check(b);
    assert_eq!(errs.len(), 1, "expected one error at {path}, got {errs:#?}");
    assert_eq!(errs[0].0, path, "{errs:#?}");
    errs.into_iter().next().unwrap().1
}

// ---- parsing ----

#[test]
fn quickstart_is_valid() {
    let b = quickstart();
    assert_eq!(b.node.as_ref().unwrap().id, "test");
    let r = b.static_resources.as_ref().unwrap();
    assert_eq!(r.listeners[0].address, "127.0.0.1:2525");
    assert_eq!(r.chains[0].filters.len(), 3);
    assert!(matches!(
        r.chains[0].filters[0].filter,
        Some(filter::Filter::ReceivedHeader(ReceivedHeaderFilter { ref received_hostname }))
            if received_hostname == "localhost"
    ));
    assert_eq!(check(&b), vec![]);
}

#[test]
fn unknown_field_is_an_error() {
    let yaml = QUICKSTART.replace("      hostname: localhost", "      hostnme: localhost");
    let e = parse(&yaml).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    // The path ends with the unknown key itself.
    assert_eq!(
        e.errors[0].path,
        "static_resources.listeners[0].smtp.hostnme"
    );
    let Problem::Schema(msg) = &e.errors[0].problem else {
        panic!("{e}")
    };
    assert!(msg.contains("unknown field `hostnme`"), "{msg}");
}

#[test]
fn unknown_top_level_field_is_an_error() {
    let e = parse("node: {id: x}\nlisteners: []\n").unwrap_err();
    assert_eq!(e.errors[0].path, "listeners");
    assert!(e.to_string().contains("unknown field `listeners`"), "{e}");
}

#[test]
fn wrong_type_names_the_field_path() {
    let yaml = QUICKSTART.replace(
        "      sender: smtp-in",
        "      sender: smtp-in\n      limits:\n        max_recipients: lots",
    );
    let e = parse(&yaml).unwrap_err();
    assert_eq!(
        e.errors[0].path,
        "static_resources.listeners[0].smtp.limits.max_recipients"
    );
    assert!(matches!(e.errors[0].problem, Problem::Schema(_)));
    let line = e.to_string();
    assert!(
        line.starts_with("koukan.yaml: static_resources.listeners[0].smtp.limits.max_recipients: "),
        "{line}"
    );
}

#[test]
fn list_where_a_message_is_expected() {
    let e = parse("node: {id: x}\nstatic_resources:\n  listeners:\n  - name: a\n    smtp: []\n")
        .unwrap_err();
    assert_eq!(e.errors[0].path, "static_resources.listeners[0].smtp");
}

#[test]
fn durations_parse_from_strings() {
    let yaml = QUICKSTART.replace(
        "      sender: smtp-in",
        "      sender: smtp-in\n      limits:\n        command_timeout: 30s\n        data_timeout: 1.5s\n        max_message_size: \"1048576\"",
    );
    let mut b = parse(&yaml).unwrap();
    let limits = smtp_listener(&mut b, 0).limits.unwrap();
    let ct = limits.command_timeout.unwrap();
    assert_eq!((ct.seconds, ct.nanos), (30, 0));
    let dt = limits.data_timeout.unwrap();
    assert_eq!((dt.seconds, dt.nanos), (1, 500_000_000));
    // 64-bit integers may be strings (proto JSON) or numbers.
    assert_eq!(limits.max_message_size, 1_048_576);
    assert_eq!(check(&b), vec![]);
}

#[test]
fn duration_without_unit_is_rejected() {
    let yaml = QUICKSTART.replace(
        "      sender: smtp-in",
        "      sender: smtp-in\n      limits:\n        command_timeout: 30",
    );
    let e = parse(&yaml).unwrap_err();
    assert_eq!(
        e.errors[0].path,
        "static_resources.listeners[0].smtp.limits.command_timeout"
    );
}

#[test]
fn negative_duration_is_rejected() {
    let yaml = QUICKSTART.replace(
        "      sender: smtp-in",
        "      sender: smtp-in\n      limits:\n        drain_timeout: -1s",
    );
    let b = parse(&yaml).unwrap();
    assert_eq!(
        only_error(
            &b,
            "static_resources.listeners[0].smtp.limits.drain_timeout"
        ),
        Problem::NegativeDuration
    );
}

#[test]
fn camel_case_keys_are_accepted() {
    let yaml = QUICKSTART
        .replace("static_resources:", "staticResources:")
        .replace(
            "received_header:\n        received_hostname",
            "receivedHeader:\n        receivedHostname",
        );
    assert_eq!(parse(&yaml).unwrap(), quickstart());
}

#[test]
fn two_members_of_a_oneof_are_rejected() {
    let yaml = QUICKSTART.replace(
        "    - router: {}",
        "    - router: {}\n      received_header: {}",
    );
    let e = parse(&yaml).unwrap_err();
    assert_eq!(e.errors[0].path, "static_resources.chains[0].filters[2]");
    assert!(e.to_string().contains("duplicate field"), "{e}");
}

#[test]
fn enums_parse_by_name() {
    let yaml = |tls: &str| {
        format!(
            "node: {{id: x}}\nstatic_resources:\n  endpoints:\n  - name: e\n    smtp: {{ehlo_hostname: h, tls: {tls}}}\n"
        )
    };
    let b = parse(&yaml("REQUIRED")).unwrap();
    let Some(endpoint::Endpoint::Smtp(s)) = &b.static_resources.unwrap().endpoints[0].endpoint
    else {
        panic!()
    };
    assert_eq!(s.tls(), TlsMode::Required);
    let e = parse(&yaml("required")).unwrap_err();
    assert_eq!(e.errors[0].path, "static_resources.endpoints[0].smtp.tls");
}

#[test]
fn yaml_syntax_error_is_one_line() {
    let e = parse("node: {id: x\nadmin: [").unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert!(matches!(e.errors[0].problem, Problem::Yaml(_)));
    let s = e.to_string();
    assert!(s.starts_with("koukan.yaml: invalid YAML: "), "{s}");
    assert!(!s.contains('\n'), "{s}");
}

#[test]
fn duplicate_yaml_keys_are_rejected() {
    let e = parse("node: {id: x}\nnode: {id: y}\n").unwrap_err();
    assert!(matches!(e.errors[0].problem, Problem::Yaml(_)), "{e}");
}

#[test]
fn empty_document_needs_a_node() {
    let b = parse("").unwrap();
    assert_eq!(only_error(&b, "node"), Problem::Missing);
    let b = parse("node: {}").unwrap();
    assert_eq!(only_error(&b, "node.id"), Problem::Missing);
}

#[test]
fn serializes_with_snake_case_names() {
    let json = serde_json::to_value(quickstart()).unwrap();
    assert!(json.get("static_resources").is_some(), "{json}");
    // Round trip through JSON gives the same message.
    let back: Bootstrap = serde_json::from_value(json).unwrap();
    assert_eq!(back, quickstart());
}

// ---- loading and error display ----

#[test]
fn load_reports_missing_config_file_with_its_name() {
    let e = load_bootstrap_file(Path::new("/nonexistent/koukan.yaml")).unwrap_err();
    assert!(matches!(e.errors[0].problem, Problem::ReadConfig(_)));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/koukan.yaml: cannot read config file: "),
        "{e}"
    );
}

#[test]
fn load_resolves_files_relative_to_the_config() {
    let dir = Dir::new();
    dir.file("certs/mx.crt", PEM);
    dir.file("certs/mx.key", "-----BEGIN PRIVATE KEY-----\n");
    let yaml = QUICKSTART.replace(
        "      sender: smtp-in",
        "      sender: smtp-in\n      tls: {cert: certs/mx.crt, key: certs/mx.key}",
    );
    dir.file("koukan.yaml", &yaml);
    let b = load_bootstrap_file(&dir.config()).unwrap();
    // Paths are kept as written.
    let mut b2 = b.clone();
    assert_eq!(
        smtp_listener(&mut b2, 0).tls.as_ref().unwrap().cert,
        "certs/mx.crt"
    );

    // The same config read from elsewhere does not find the files.
    let other = Dir::new();
    let errs = check_in(&other, &b);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(matches!(errs[0].1, Problem::FileNotFound { .. }));
}

#[test]
fn display_is_one_line_per_error_prefixed_with_the_file() {
    let e = ConfigErrors {
        file: PathBuf::from("koukan.yaml"),
        errors: vec![
            ConfigError {
                path: "static_resources.listeners[1].smtp.tls.cert".into(),
                problem: Problem::FileNotFound {
                    value: "certs/x.pem".into(),
                    resolved: PathBuf::from("certs/x.pem"),
                },
            },
            ConfigError {
                path: "node.id".into(),
                problem: Problem::Missing,
            },
        ],
    };
    assert_eq!(
        e.to_string(),
        "koukan.yaml: static_resources.listeners[1].smtp.tls.cert: file not found: certs/x.pem\n\
         koukan.yaml: node.id: must be set"
    );
}

#[test]
fn file_not_found_shows_the_resolved_path() {
    let p = Problem::FileNotFound {
        value: "certs/x.pem".into(),
        resolved: PathBuf::from("/etc/koukan/certs/x.pem"),
    };
    assert_eq!(
        p.to_string(),
        "file not found: certs/x.pem (resolved to /etc/koukan/certs/x.pem)"
    );
}

#[test]
fn several_errors_are_all_reported() {
    let mut b = quickstart();
    b.node = Some(Node { id: String::new() });
    b.admin = Some(Admin {
        address: "localhost".into(),
        ..Default::default()
    });
    res(&mut b).listeners[0].address = "nowhere".into();
    smtp_listener(&mut b, 0).sender = "ghost".into();
    res(&mut b).senders[0].chain = "missing".into();
    res(&mut b).endpoints[0].endpoint = Some(endpoint::Endpoint::Maildir(MaildirEndpoint {
        path: String::new(),
    }));
    let e = validate(Path::new("koukan.yaml"), &b).unwrap_err();
    let paths: Vec<_> = e.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "node.id",
            "admin.address",
            "static_resources.listeners[0].address",
            "static_resources.listeners[0].smtp.sender",
            "static_resources.senders[0].chain",
            "static_resources.endpoints[0].maildir.path",
        ]
    );
    assert_eq!(e.to_string().lines().count(), 6);
    assert!(
        e.to_string()
            .lines()
            .all(|l| l.starts_with("koukan.yaml: "))
    );
}

// ---- one test per validation rule ----

#[test]
fn listener_names_must_be_set_and_unique() {
    let mut b = quickstart();
    let mut second = res(&mut b).listeners[0].clone();
    second.address = "127.0.0.1:2526".into();
    res(&mut b).listeners.push(second);
    assert!(matches!(
        only_error(&b, "static_resources.listeners[1].name"),
        Problem::Duplicate { kind: "listener name", ref first, .. }
            if first == "static_resources.listeners[0]"
    ));
    res(&mut b).listeners[1].name = String::new();
    assert_eq!(
        only_error(&b, "static_resources.listeners[1].name"),
        Problem::Missing
    );
}

#[test]
fn listener_addresses_must_parse_and_be_unique() {
    let mut b = quickstart();
    let mut second = res(&mut b).listeners[0].clone();
    second.name = "smtp2".into();
    res(&mut b).listeners.push(second);
    assert!(matches!(
        only_error(&b, "static_resources.listeners[1].address"),
        Problem::Duplicate {
            kind: "address",
            ..
        }
    ));
    res(&mut b).listeners[1].address = "localhost:25".into();
    assert!(matches!(
        only_error(&b, "static_resources.listeners[1].address"),
        Problem::BadSocketAddr { .. }
    ));
    // The admin server counts as a bound address too.
    res(&mut b).listeners[1].address = "127.0.0.1:9901".into();
    assert!(matches!(
        only_error(&b, "static_resources.listeners[1].address"),
        Problem::Duplicate { ref first, .. } if first == "admin.address"
    ));
}

#[test]
fn listener_needs_a_protocol() {
    let mut b = quickstart();
    res(&mut b).listeners[0].protocol = None;
    assert_eq!(
        only_error(&b, "static_resources.listeners[0]"),
        Problem::OneofMissing("smtp, http")
    );
}

#[test]
fn tls_files_must_exist_and_be_pem() {
    let dir = Dir::new();
    dir.file("cert.pem", PEM);
    dir.file("key.der", "\x30\x03binary");
    let mut b = quickstart();
    smtp_listener(&mut b, 0).tls = Some(Tls {
        cert: "cert.pem".into(),
        key: "key.der".into(),
    });
    let errs = check_in(&dir, &b);
    assert_eq!(
        errs,
        vec![(
            "static_resources.listeners[0].smtp.tls.key".into(),
            Problem::NotPem {
                value: "key.der".into()
            }
        )]
    );

    smtp_listener(&mut b, 0).tls = Some(Tls {
        cert: "/x/y.pem".into(),
        key: "cert.pem".into(),
    });
    let errs = check_in(&dir, &b);
    assert_eq!(
        errs,
        vec![(
            "static_resources.listeners[0].smtp.tls.cert".into(),
            Problem::FileNotFound {
                value: "/x/y.pem".into(),
                resolved: PathBuf::from("/x/y.pem"),
            }
        )]
    );
    assert_eq!(
        errs[0].1.to_string(),
        "file not found: /x/y.pem",
        "absolute paths are shown once"
    );

    // A directory is not a readable file.
    smtp_listener(&mut b, 0).tls = Some(Tls {
        cert: ".".into(),
        key: "cert.pem".into(),
    });
    let errs = check_in(&dir, &b);
    assert!(
        matches!(errs[..], [(_, Problem::FileUnreadable { .. })]),
        "{errs:#?}"
    );
}

#[test]
fn tls_cert_and_key_go_together() {
    let mut b = quickstart();
    smtp_listener(&mut b, 0).tls = Some(Tls {
        cert: String::new(),
        key: "/k.pem".into(),
    });
    assert_eq!(
        only_error(&b, "static_resources.listeners[0].smtp.tls.cert"),
        Problem::RequiredWith("key")
    );
    smtp_listener(&mut b, 0).tls = Some(Tls {
        cert: "/c.pem".into(),
        key: String::new(),
    });
    assert_eq!(
        only_error(&b, "static_resources.listeners[0].smtp.tls.key"),
        Problem::RequiredWith("cert")
    );
    // Neither: no TLS, fine.
    smtp_listener(&mut b, 0).tls = Some(Tls::default());
    assert_eq!(check(&b), vec![]);
}

#[test]
fn implicit_tls_needs_tls() {
    let mut b = quickstart();
    smtp_listener(&mut b, 0).implicit_tls = true;
    assert_eq!(
        only_error(&b, "static_resources.listeners[0].smtp.implicit_tls"),
        Problem::ImplicitTlsWithoutTls
    );
}

#[test]
fn auth_needs_a_secrets_file_and_tls() {
    let dir = Dir::new();
    dir.file("secrets.json", "{}");
    let mut b = quickstart();
    smtp_listener(&mut b, 0).auth = Some(SmtpAuth {
        secrets: "secrets.json".into(),
        require: true,
        allow_plaintext_on_loopback: true,
        failure_limits: None,
    });
    assert_eq!(check_in(&dir, &b), vec![]);

    smtp_listener(&mut b, 0).auth = Some(SmtpAuth {
        secrets: "nope.json".into(),
        require: true,
        allow_plaintext_on_loopback: false,
        failure_limits: None,
    });
    let errs = check_in(&dir, &b);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].0, "static_resources.listeners[0].smtp.auth.secrets");
    assert!(matches!(errs[0].1, Problem::FileNotFound { .. }));
    assert_eq!(
        errs[1],
        (
            "static_resources.listeners[0].smtp.auth".into(),
            Problem::AuthWithoutTls
        )
    );

    smtp_listener(&mut b, 0).auth = Some(SmtpAuth {
        secrets: String::new(),
        require: false,
        allow_plaintext_on_loopback: true,
        failure_limits: None,
    });
    assert_eq!(
        only_error(&b, "static_resources.listeners[0].smtp.auth.secrets"),
        Problem::Missing
    );
}

#[test]
fn auth_failure_limits_parse_and_durations_are_checked() {
    let dir = Dir::new();
    dir.file("secrets.json", "{}");
    let yaml = QUICKSTART.replace(
        "      sender: smtp-in\n",
        "      sender: smtp-in\n      auth:\n        secrets: secrets.json\n        \
         allow_plaintext_on_loopback: true\n        failure_limits: {max_failures_per_address: 5, \
         max_failures_per_user: 50, window: 600s, lockout: 3600s, delay: 0.25s, max_delay: 4s}\n",
    );
    let b = parse(&yaml).unwrap();
    let f = b.static_resources.as_ref().unwrap().listeners[0]
        .protocol
        .as_ref()
        .map(|p| match p {
            listener::Protocol::Smtp(s) => s.auth.clone().unwrap().failure_limits.unwrap(),
            other => panic!("not an smtp listener: {other:?}"),
        })
        .unwrap();
    assert_eq!(
        (f.max_failures_per_address, f.max_failures_per_user),
        (5, 50)
    );
    assert_eq!(f.window.unwrap().seconds, 600);
    assert_eq!(f.lockout.unwrap().seconds, 3600);
    assert_eq!(f.delay.unwrap().nanos, 250_000_000);
    assert_eq!(f.max_delay.unwrap().seconds, 4);
    assert!(!f.disabled);
    assert_eq!(check_in(&dir, &b), vec![]);

    let yaml = yaml.replace("delay: 0.25s", "delay: -1s");
    let b = parse(&yaml).unwrap();
    assert_eq!(
        check_in(&dir, &b),
        vec![(
            "static_resources.listeners[0].smtp.auth.failure_limits.delay".into(),
            Problem::NegativeDuration
        )]
    );
    let yaml = QUICKSTART.replace(
        "      sender: smtp-in\n",
        "      sender: smtp-in\n      auth: {secrets: secrets.json, \
         allow_plaintext_on_loopback: true, failure_limits: {lockot: 1s}}\n",
    );
    let e = parse(&yaml).unwrap_err();
    assert_eq!(
        e.errors[0].path,
        "static_resources.listeners[0].smtp.auth.failure_limits.lockot"
    );
}

#[test]
fn listener_sender_must_exist() {
    let mut b = quickstart();
    smtp_listener(&mut b, 0).sender = "ghost".into();
    assert_eq!(
        only_error(&b, "static_resources.listeners[0].smtp.sender"),
        Problem::UnknownRef {
            kind: "sender",
            name: "ghost".into()
        }
    );
    smtp_listener(&mut b, 0).sender = String::new();
    assert_eq!(
        only_error(&b, "static_resources.listeners[0].smtp.sender"),
        Problem::Missing
    );
}

#[test]
fn listener_tag_must_lead_to_a_chain() {
    let mut b = quickstart();
    let s = &mut res(&mut b).senders[0];
    s.chain = String::new();
    s.tags = vec![SenderTag {
        name: "mx".into(),
        chain: "inbound".into(),
    }];
    smtp_listener(&mut b, 0).tag = "msa".into();
    assert_eq!(
        only_error(&b, "static_resources.listeners[0].smtp.tag"),
        Problem::NoChainForTag {
            sender: "smtp-in".into(),
            tag: "msa".into()
        }
    );
    smtp_listener(&mut b, 0).tag = "mx".into();
    assert_eq!(check(&b), vec![]);
}

#[test]
fn sender_chains_must_exist() {
    let mut b = quickstart();
    let s = &mut res(&mut b).senders[0];
    s.chain = "nope".into();
    s.tags = vec![
        SenderTag {
            name: "a".into(),
            chain: "also-nope".into(),
        },
        SenderTag {
            name: "a".into(),
            chain: String::new(),
        },
    ];
    let errs = check(&b);
    assert_eq!(
        errs,
        vec![
            (
                "static_resources.senders[0].tags[0].chain".into(),
                Problem::UnknownRef {
                    kind: "chain",
                    name: "also-nope".into()
                }
            ),
            (
                "static_resources.senders[0].tags[1].name".into(),
                Problem::Duplicate {
                    kind: "tag name",
                    value: "a".into(),
                    first: "static_resources.senders[0].tags[0]".into()
                }
            ),
            (
                "static_resources.senders[0].chain".into(),
                Problem::UnknownRef {
                    kind: "chain",
                    name: "nope".into()
                }
            ),
        ]
    );
}

#[test]
fn sender_needs_a_default_chain_unless_every_tag_has_one() {
    let mut b = quickstart();
    res(&mut b).senders[0].chain = String::new();
    // Also the listener (no tag) has no chain now.
    let errs = check(&b);
    assert_eq!(
        errs.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        [
            "static_resources.listeners[0].smtp.tag",
            "static_resources.senders[0].chain"
        ]
    );
    assert_eq!(errs[1].1, Problem::Missing);

    let s = &mut res(&mut b).senders[0];
    s.tags = vec![SenderTag {
        name: "t".into(),
        chain: String::new(),
    }];
    let errs = check(&b);
    assert_eq!(
        errs[1],
        (
            "static_resources.senders[0].chain".into(),
            Problem::NoDefaultChain { tag: "t".into() }
        )
    );
}

#[test]
fn sender_and_chain_and_endpoint_names_are_unique() {
    let mut b = quickstart();
    let r = res(&mut b);
    r.senders.push(r.senders[0].clone());
    r.chains.push(r.chains[0].clone());
    r.endpoints.push(r.endpoints[0].clone());
    let errs = check(&b);
    let kinds: Vec<_> = errs
        .iter()
        .map(|(p, e)| match e {
            Problem::Duplicate { kind, .. } => (p.as_str(), *kind),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("static_resources.senders[1].name", "sender name"),
            ("static_resources.chains[1].name", "chain name"),
            ("static_resources.endpoints[1].name", "endpoint name"),
        ]
    );
}

#[test]
fn router_destination_endpoint_must_exist() {
    let mut b = quickstart();
    let Some(routing_policy::Policy::AddressList(a)) = router(&mut b, 0, 1)
        .policy
        .as_mut()
        .unwrap()
        .policy
        .as_mut()
    else {
        panic!()
    };
    a.destination.as_mut().unwrap().endpoint = "elsewhere".into();
    let p = "static_resources.chains[0].filters[1].router.policy.address_list.destination.endpoint";
    assert_eq!(
        only_error(&b, p),
        Problem::UnknownRef {
            kind: "endpoint",
            name: "elsewhere".into()
        }
    );
}

#[test]
fn static_router_destination_is_checked() {
    let mut b = quickstart();
    res(&mut b).endpoints.push(smtp_endpoint("relay", vec![]));
    *router(&mut b, 0, 2) = RouterFilter {
        policy: None,
        destination: Some(Destination {
            endpoint: "relay".into(),
            host_list: vec![hp("smarthost", 0), hp("", 70000)],
        }),
    };
    let p = "static_resources.chains[0].filters[2].router.destination.host_list";
    assert_eq!(
        check(&b),
        vec![
            (format!("{p}[0].port"), Problem::BadPort(0)),
            (format!("{p}[1].host"), Problem::Missing),
            (format!("{p}[1].port"), Problem::BadPort(70000)),
        ]
    );
    // Without a host list the endpoint must have hosts of its own.
    router(&mut b, 0, 2).destination.as_mut().unwrap().host_list = vec![];
    assert_eq!(
        only_error(
            &b,
            "static_resources.chains[0].filters[2].router.destination.endpoint"
        ),
        Problem::NoHosts {
            name: "relay".into()
        }
    );
    // A maildir takes no host list.
    *router(&mut b, 0, 2) = RouterFilter {
        policy: None,
        destination: Some(Destination {
            endpoint: "local-maildir".into(),
            host_list: vec![hp("h", 25)],
        }),
    };
    assert!(matches!(
        only_error(
            &b,
            "static_resources.chains[0].filters[2].router.destination.host_list"
        ),
        Problem::HostListNotApplicable { .. }
    ));
    // Empty endpoint name.
    router(&mut b, 0, 2).destination = Some(Destination::default());
    assert_eq!(
        only_error(
            &b,
            "static_resources.chains[0].filters[2].router.destination.endpoint"
        ),
        Problem::Missing
    );
}

#[test]
fn router_policy_and_destination_are_exclusive() {
    let mut b = quickstart();
    router(&mut b, 0, 1).destination = Some(Destination {
        endpoint: "local-maildir".into(),
        host_list: vec![],
    });
    assert_eq!(
        only_error(
            &b,
            "static_resources.chains[0].filters[1].router.destination"
        ),
        Problem::DestinationWithPolicy
    );
}

#[test]
fn empty_policy_is_rejected() {
    let mut b = quickstart();
    router(&mut b, 0, 1).policy = Some(RoutingPolicy { policy: None });
    let errs = check(&b);
    assert_eq!(
        errs[0],
        (
            "static_resources.chains[0].filters[1].router.policy".into(),
            Problem::OneofMissing("address_list, dest_domain")
        )
    );
}

#[test]
fn address_list_delimiter_is_one_char_and_lists_have_no_empty_entries() {
    let mut b = quickstart();
    router(&mut b, 0, 1).policy = Some(RoutingPolicy {
        policy: Some(routing_policy::Policy::AddressList(AddressListPolicy {
            domains: vec!["example.com".into(), String::new()],
            prefixes: vec![String::new()],
            delimiter: "+-".into(),
            destination: Some(Destination {
                endpoint: "local-maildir".into(),
                host_list: vec![],
            }),
        })),
    });
    let p = "static_resources.chains[0].filters[1].router.policy.address_list";
    assert_eq!(
        check(&b),
        vec![
            (format!("{p}.domains[1]"), Problem::Missing),
            (format!("{p}.prefixes[0]"), Problem::Missing),
            (format!("{p}.delimiter"), Problem::BadDelimiter("+-".into())),
        ]
    );
    // One multi-byte character is fine.
    let Some(routing_policy::Policy::AddressList(a)) = router(&mut b, 0, 1)
        .policy
        .as_mut()
        .unwrap()
        .policy
        .as_mut()
    else {
        panic!()
    };
    a.domains.pop();
    a.prefixes.clear();
    a.delimiter = "é".into();
    assert_eq!(check(&b), vec![]);
}

#[test]
fn dest_domain_needs_an_smtp_endpoint_and_a_valid_port() {
    let mut b = quickstart();
    res(&mut b)
        .endpoints
        .push(smtp_endpoint("internet", vec![]));
    router(&mut b, 0, 1).policy = Some(RoutingPolicy {
        policy: Some(routing_policy::Policy::DestDomain(DestDomainPolicy {
            endpoint: "internet".into(),
            dest_port: 0,
        })),
    });
    // MX routing needs no endpoint hosts, and port 0 means 25.
    assert_eq!(check(&b), vec![]);

    router(&mut b, 0, 1).policy = Some(RoutingPolicy {
        policy: Some(routing_policy::Policy::DestDomain(DestDomainPolicy {
            endpoint: "local-maildir".into(),
            dest_port: 65536,
        })),
    });
    let p = "static_resources.chains[0].filters[1].router.policy.dest_domain";
    assert_eq!(
        check(&b),
        vec![
            (format!("{p}.dest_port"), Problem::BadPort(65536)),
            (
                format!("{p}.endpoint"),
                Problem::WrongEndpointKind {
                    name: "local-maildir".into(),
                    found: "maildir",
                    expected: "smtp"
                }
            ),
        ]
    );
    router(&mut b, 0, 1).policy = Some(RoutingPolicy {
        policy: Some(routing_policy::Policy::DestDomain(DestDomainPolicy {
            endpoint: "nope".into(),
            dest_port: 25,
        })),
    });
    assert!(matches!(
        only_error(&b, &format!("{p}.endpoint")),
        Problem::UnknownRef {
            kind: "endpoint",
            ..
        }
    ));
}

#[test]
fn chain_endpoint_must_exist() {
    let mut b = quickstart();
    res(&mut b).chains[0].endpoint = "nope".into();
    assert!(matches!(
        only_error(&b, "static_resources.chains[0].endpoint"),
        Problem::UnknownRef {
            kind: "endpoint",
            ..
        }
    ));
    res(&mut b).endpoints.push(smtp_endpoint("relay", vec![]));
    res(&mut b).chains[0].endpoint = "relay".into();
    assert!(matches!(
        only_error(&b, "static_resources.chains[0].endpoint"),
        Problem::NoHosts { .. }
    ));
}

#[test]
fn chain_must_deliver_somewhere() {
    let mut b = quickstart();
    // Drop the address_list router: only received_header and the
    // reject-all router remain.
    res(&mut b).chains[0].filters.remove(1);
    assert_eq!(
        only_error(&b, "static_resources.chains[0]"),
        Problem::NoDelivery
    );
    // A default endpoint is enough.
    res(&mut b).chains[0].endpoint = "local-maildir".into();
    assert_eq!(check(&b), vec![]);
    // So is an address_list with a destination (the quickstart itself).
    assert_eq!(check(&quickstart()), vec![]);
}

#[test]
fn filter_needs_a_type_and_unique_names() {
    let mut b = quickstart();
    let c = &mut res(&mut b).chains[0];
    c.filters[0].name = "f".into();
    c.filters[1].name = "f".into();
    c.filters.push(Filter {
        name: String::new(),
        filter: None,
    });
    assert_eq!(
        check(&b),
        vec![
            (
                "static_resources.chains[0].filters[1].name".into(),
                Problem::Duplicate {
                    kind: "filter name",
                    value: "f".into(),
                    first: "static_resources.chains[0].filters[0]".into()
                }
            ),
            (
                "static_resources.chains[0].filters[3]".into(),
                Problem::OneofMissing("router, received_header, message_parse")
            ),
        ]
    );
}

#[test]
fn smtp_endpoint_rules() {
    let dir = Dir::new();
    dir.file("ca.pem", PEM);
    let mut b = quickstart();
    let mut e = smtp_endpoint("relay", vec![hp("relay.example.com", 587), hp("x", 0)]);
    let Some(endpoint::Endpoint::Smtp(s)) = e.endpoint.as_mut() else {
        panic!()
    };
    s.ehlo_hostname = String::new();
    s.tls = 7;
    s.ca_file = "ca.pem".into();
    s.connect_timeout = Some(pbjson_types::Duration {
        seconds: -5,
        nanos: 0,
    });
    res(&mut b).endpoints.push(e);
    let p = "static_resources.endpoints[1].smtp";
    assert_eq!(
        check_in(&dir, &b),
        vec![
            (format!("{p}.ehlo_hostname"), Problem::Missing),
            (format!("{p}.hosts[1].port"), Problem::BadPort(0)),
            (format!("{p}.tls"), Problem::UnknownEnumValue(7)),
            (format!("{p}.connect_timeout"), Problem::NegativeDuration),
        ]
    );
    let Some(endpoint::Endpoint::Smtp(s)) = res(&mut b).endpoints[1].endpoint.as_mut() else {
        panic!()
    };
    s.ca_file = "missing-ca.pem".into();
    let errs = check_in(&dir, &b);
    assert!(
        errs.iter().any(|(path, e)| path == &format!("{p}.ca_file")
            && matches!(e, Problem::FileNotFound { .. }))
    );
}

#[test]
fn endpoint_needs_a_kind_and_maildir_a_path() {
    let mut b = quickstart();
    res(&mut b).endpoints[0].endpoint = Some(endpoint::Endpoint::Maildir(MaildirEndpoint {
        path: String::new(),
    }));
    assert_eq!(
        only_error(&b, "static_resources.endpoints[0].maildir.path"),
        Problem::Missing
    );
    res(&mut b).endpoints[0].endpoint = None;
    assert_eq!(
        only_error(&b, "static_resources.endpoints[0]"),
        Problem::OneofMissing("smtp, maildir, rest")
    );
}

/// The quickstart with its endpoint replaced by a `rest` endpoint written
/// as YAML (the inside of `rest: {...}`).
fn rest_config(rest: &str) -> Bootstrap {
    let yaml = QUICKSTART.replace(
        "    maildir:\n      path: data/maildir\n",
        &format!("    rest: {{{rest}}}\n"),
    );
    parse(&yaml).expect("parses")
}

#[test]
fn rest_endpoint_parses_with_every_field() {
    let b = rest_config(
        "url: \"https://app.internal:8443/senders/router/transactions\", \
         sender_name: router, sender_tag: mx, rcpt_timeout: 10s, data_timeout: 60s, \
         chunk_size: 1048576, verify_certificates: false, send_filter_output: true, \
         max_redirects: 0",
    );
    assert_eq!(check(&b), vec![]);
    let Some(endpoint::Endpoint::Rest(r)) =
        &b.static_resources.as_ref().unwrap().endpoints[0].endpoint
    else {
        panic!("not rest")
    };
    assert_eq!(r.sender_tag, "mx");
    assert_eq!(r.chunk_size, 1_048_576);
    assert_eq!(r.verify_certificates, Some(false));
    assert_eq!(r.max_redirects, Some(0), "0 is kept apart from absent");
    let b = rest_config("url: \"http://127.0.0.1:8002/t\"");
    let Some(endpoint::Endpoint::Rest(r)) =
        &b.static_resources.as_ref().unwrap().endpoints[0].endpoint
    else {
        panic!("not rest")
    };
    assert_eq!((r.verify_certificates, r.max_redirects), (None, None));
    assert_eq!(check(&b), vec![]);
}

#[test]
fn rest_endpoint_rules() {
    let p = "static_resources.endpoints[0].rest";
    assert_eq!(
        only_error(&rest_config("sender_name: x"), &format!("{p}.url")),
        Problem::Missing
    );
    for (url, reason) in [
        ("not a url", "relative URL without a base"),
        ("ftp://h/x", "scheme \"ftp\": expected http or https"),
        ("http://u:pw@h/x", "credentials in the URL"),
        ("http://h/x#frag", "a fragment"),
        ("http://h:99999/x", "invalid port number"),
    ] {
        let b = rest_config(&format!("url: \"{url}\""));
        match only_error(&b, &format!("{p}.url")) {
            Problem::BadUrl { value, reason: r } => {
                assert_eq!(value, url);
                assert!(r.contains(reason), "{url}: {r}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    let b = rest_config("url: \"http://h/x\", sender_tag: t");
    assert_eq!(
        only_error(&b, &format!("{p}.sender_name")),
        Problem::RequiredWith("sender_tag")
    );
    let b = rest_config("url: \"http://h/x\", rcpt_timeout: -1s");
    assert_eq!(
        only_error(&b, &format!("{p}.rcpt_timeout")),
        Problem::NegativeDuration
    );
    let b = rest_config("url: \"http://h/x\", max_redirects: 21");
    assert_eq!(
        only_error(&b, &format!("{p}.max_redirects")),
        Problem::AboveMaximum { value: 21, max: 20 }
    );
    let b = rest_config("url: \"http://h/x\", receive_parsing: {max_inline: 10}");
    assert_eq!(check(&b), vec![]);
    // The CA file is a local check, relative to the config.
    let dir = Dir::new();
    let b = rest_config("url: \"https://h/x\", ca_file: ca.pem");
    let errs = check_in(&dir, &b);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, format!("{p}.ca_file"));
    assert!(matches!(errs[0].1, Problem::FileNotFound { .. }));
    assert_eq!(validate_pure(&b), Ok(()), "not a pure error");
    dir.file("ca.pem", PEM);
    assert_eq!(check_in(&dir, &b), vec![]);
    // Recipients routed to it: no host_list, no MX routing.
    let mut b = rest_config("url: \"http://h/x\"");
    router(&mut b, 0, 1)
        .policy
        .as_mut()
        .and_then(|p| match p.policy.as_mut() {
            Some(routing_policy::Policy::AddressList(a)) => a.destination.as_mut(),
            _ => None,
        })
        .unwrap()
        .host_list = vec![hp("h", 25)];
    let path =
        "static_resources.chains[0].filters[1].router.policy.address_list.destination.host_list";
    assert_eq!(
        only_error(&b, path),
        Problem::HostListNotApplicable {
            name: "local-maildir".into(),
            found: "rest"
        }
    );
}

#[test]
fn admin_storage_and_dns_rules() {
    let mut b = quickstart();
    b.admin = Some(Admin {
        address: String::new(),
        ..Default::default()
    });
    assert_eq!(only_error(&b, "admin.address"), Problem::Missing);
    b.admin = Some(Admin {
        address: "127.0.0.1:9901".into(),
        allowed_hosts: vec!["koukan-admin.mail.svc".into(), "http://x/".into()],
    });
    assert_eq!(
        only_error(&b, "admin.allowed_hosts[1]"),
        Problem::BadHost {
            value: "http://x/".into()
        }
    );
    b.admin = None;
    assert_eq!(check(&b), vec![], "admin is optional");

    b.storage = Some(Storage { backend: None });
    assert_eq!(
        only_error(&b, "storage"),
        Problem::OneofMissing("embedded, redis")
    );
    b.storage = Some(Storage {
        backend: Some(storage::Backend::Embedded(EmbeddedStorage {
            path: String::new(),
            reserve_bytes: None,
        })),
    });
    assert_eq!(only_error(&b, "storage.embedded.path"), Problem::Missing);
    b.storage = None;

    b.dns = Some(Dns {
        nameservers: vec![
            "127.0.0.1:5353".into(),
            "9.9.9.9".into(),
            "[::1]:53".into(),
            "::1".into(),
            "dns.google".into(),
        ],
    });
    assert_eq!(
        only_error(&b, "dns.nameservers[4]"),
        Problem::BadNameserver {
            value: "dns.google".into()
        }
    );
}

#[test]
fn limits_are_parsed() {
    let mut b = quickstart();
    smtp_listener(&mut b, 0).limits = Some(SmtpLimits {
        max_message_size: 1 << 20,
        ..Default::default()
    });
    assert_eq!(check(&b), vec![]);
}

#[test]
fn data_line_length_is_at_least_rfc_5321s_1000() {
    let path = "static_resources.listeners[0].smtp.limits.max_data_line_length";
    let mut b = quickstart();
    for ok in [0, 1000, 1001, 1 << 20, u32::MAX] {
        smtp_listener(&mut b, 0).limits = Some(SmtpLimits {
            max_data_line_length: ok,
            ..Default::default()
        });
        assert_eq!(check(&b), vec![], "{ok}");
    }
    for bad in [1, 998, 999] {
        smtp_listener(&mut b, 0).limits = Some(SmtpLimits {
            max_data_line_length: bad,
            ..Default::default()
        });
        assert_eq!(
            only_error(&b, path),
            Problem::BelowMinimum {
                value: bad.into(),
                min: 1000,
                why: "RFC 5321 section 4.5.3.1.6"
            }
        );
    }
    // From YAML, with the file and field path in the message.
    let yaml = QUICKSTART.replace(
        "      sender: smtp-in\n",
        "      sender: smtp-in\n      limits: {max_data_line_length: 999}\n",
    );
    let b = parse(&yaml).unwrap();
    let err = validate(Path::new("koukan.yaml"), &b).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "koukan.yaml: {path}: must be at least 1000 (RFC 5321 section 4.5.3.1.6) \
             or 0 for the default, got 999"
        )
    );
}

#[test]
fn nameserver_parsing() {
    assert_eq!(
        parse_nameserver("127.0.0.1:5353"),
        Some("127.0.0.1:5353".parse().unwrap())
    );
    assert_eq!(
        parse_nameserver("10.0.0.1"),
        Some("10.0.0.1:53".parse().unwrap())
    );
    assert_eq!(parse_nameserver("::1"), Some("[::1]:53".parse().unwrap()));
    assert_eq!(parse_nameserver("resolver"), None);
}

#[test]
fn path_resolution() {
    let cfg = Path::new("/etc/koukan/koukan.yaml");
    assert_eq!(
        resolve_path(cfg, "certs/a.pem"),
        Path::new("/etc/koukan/certs/a.pem")
    );
    assert_eq!(resolve_path(cfg, "/abs/a.pem"), Path::new("/abs/a.pem"));
    assert_eq!(
        resolve_path(Path::new("configs/quickstart.yaml"), "data/maildir"),
        Path::new("configs/data/maildir")
    );
    // A bare file name: its directory is the working directory.
    assert_eq!(
        resolve_path(Path::new("koukan.yaml"), "data/maildir"),
        Path::new("data/maildir")
    );
}

// ---- the shipped examples ----

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(name)
}

#[test]
fn example_quickstart_loads() {
    let b = load_bootstrap_file(&example("quickstart.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.node.unwrap().id, "quickstart");
}

#[test]
fn example_relay_loads() {
    load_bootstrap_file(&example("relay.yaml")).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn example_rest_app_loads() {
    load_bootstrap_file(&example("rest-app.yaml")).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn example_mx_gateway_only_lacks_its_secret_files() {
    // The certificate, key, CA and AUTH secrets are not shipped; every
    // other rule must pass.
    let e = load_bootstrap_file(&example("mx-gateway.yaml")).unwrap_err();
    let missing: Vec<_> = e
        .errors
        .iter()
        .map(|e| match &e.problem {
            Problem::FileNotFound { value, .. } => value.as_str(),
            _ => panic!("unexpected error: {e}"),
        })
        .collect();
    assert_eq!(
        missing,
        [
            "certs/mx.example.com.crt",
            "certs/mx.example.com.key",
            "certs/mx.example.com.crt",
            "certs/mx.example.com.key",
            "secrets/smtp-auth.json",
            "certs/mx.example.com.crt",
            "certs/mx.example.com.key",
            "secrets/smtp-auth.json",
            "certs/internal-ca.pem",
        ]
    );

    // With the files in place it is valid.
    let dir = Dir::new();
    dir.file("certs/mx.example.com.crt", PEM);
    dir.file("certs/mx.example.com.key", "-----BEGIN PRIVATE KEY-----\n");
    dir.file("certs/internal-ca.pem", PEM);
    dir.file("secrets/smtp-auth.json", "{}");
    let b = parse_bootstrap(
        &dir.config(),
        &std::fs::read_to_string(example("mx-gateway.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(check_in(&dir, &b), vec![]);
}

#[test]
fn store_and_forward_needs_storage_and_a_known_output_chain() {
    let mut b = quickstart();
    b.storage = None;
    res(&mut b).chains[0].delivery = Some(chain::Delivery::StoreAndForward(StoreAndForward {
        output_chain: "missing".into(),
    }));
    let errs = check(&b);
    let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "static_resources.chains[0].store_and_forward.output_chain",
            "static_resources.chains[0].store_and_forward",
        ],
        "{errs:#?}"
    );
    assert!(matches!(errs[1].1, Problem::NeedsStorage));
}

#[test]
fn retry_and_notification_are_checked() {
    let mut b = quickstart();
    let chain = &mut res(&mut b).chains[0];
    chain.retry = Some(RetryParams {
        backoff_factor: -1.0,
        ..Default::default()
    });
    chain.notification = Some(Notification {
        chain: "nowhere".into(),
        mailer_daemon: String::new(),
    });
    let errs = check(&b);
    let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "static_resources.chains[0].retry.backoff_factor",
            "static_resources.chains[0].notification.chain",
        ],
        "{errs:#?}"
    );
}

#[test]
fn redis_storage_needs_a_url() {
    let mut b = quickstart();
    b.storage = Some(Storage {
        backend: Some(storage::Backend::Redis(RedisStorage::default())),
    });
    assert!(matches!(
        only_error(&b, "storage.redis.url"),
        Problem::Missing
    ));
}

/// The storage reserves: absent is the default (`None`), 0 is expressible
/// and means "no reserve", and a value that is not a byte count is an
/// error naming the field.
#[test]
fn storage_reserves_parse_absent_zero_and_sized() {
    let embedded = |b: &Bootstrap| match b.storage.as_ref().and_then(|s| s.backend.clone()) {
        Some(storage::Backend::Embedded(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(embedded(&quickstart()).reserve_bytes, None);
    let with = |v: &str| {
        QUICKSTART.replace(
            "    path: data/koukan.db",
            &format!("    path: data/koukan.db\n    reserve_bytes: {v}"),
        )
    };
    assert_eq!(embedded(&parse(&with("0")).unwrap()).reserve_bytes, Some(0));
    assert_eq!(
        embedded(&parse(&with("\"8388608\"")).unwrap()).reserve_bytes,
        Some(8 << 20)
    );
    assert!(validate(Path::new("koukan.yaml"), &parse(&with("0")).unwrap()).is_ok());
    let e = parse(&with("64MiB")).unwrap_err();
    assert_eq!(e.errors[0].path, "storage.embedded.reserve_bytes");

    let redis = QUICKSTART.replace(
        "  embedded:\n    path: data/koukan.db",
        "  redis:\n    url: redis://127.0.0.1:6390/\n    memory_reserve_bytes: 1048576",
    );
    let b = parse(&redis).unwrap();
    match b.storage.and_then(|s| s.backend) {
        Some(storage::Backend::Redis(r)) => assert_eq!(r.memory_reserve_bytes, Some(1 << 20)),
        other => panic!("{other:?}"),
    }
    let e = parse(&redis.replace("1048576", "-1")).unwrap_err();
    assert_eq!(e.errors[0].path, "storage.redis.memory_reserve_bytes");
}

#[test]
fn a_chain_delivers_one_way() {
    // Two delivery members are a schema error (one oneof).
    let two = "node: {id: n}\nstatic_resources:\n  chains:\n  - name: c\n    relay: {endpoint: e}\n    store_and_forward: {output_chain: c}\n";
    let err = parse_bootstrap(Path::new("k.yaml"), two).unwrap_err();
    assert!(matches!(err.errors[0].problem, Problem::Schema(_)), "{err}");
    // The endpoint shorthand beside a delivery that is not a relay, or
    // beside relay itself.
    let mut b = quickstart();
    res(&mut b).chains[0].endpoint = "local-maildir".into();
    res(&mut b).chains[0].delivery = Some(chain::Delivery::StoreAndForward(StoreAndForward {
        output_chain: res(&mut b).chains[0].name.clone(),
    }));
    let errs = check(&b);
    assert!(
        errs.iter()
            .any(|(p, e)| p == "static_resources.chains[0].endpoint"
                && matches!(e, Problem::RelayOnly)),
        "{errs:#?}"
    );
    let mut b = quickstart();
    res(&mut b).chains[0].endpoint = "local-maildir".into();
    res(&mut b).chains[0].delivery = Some(chain::Delivery::Relay(Relay {
        endpoint: "local-maildir".into(),
    }));
    let errs = check(&b);
    assert!(
        errs.iter()
            .any(|(p, e)| p == "static_resources.chains[0].endpoint"
                && matches!(e, Problem::EndpointWithRelay)),
        "{errs:#?}"
    );
    // relay.endpoint is checked like the shorthand.
    let mut b = quickstart();
    res(&mut b).chains[0].delivery = Some(chain::Delivery::Relay(Relay {
        endpoint: "nowhere".into(),
    }));
    let errs = check(&b);
    assert!(
        errs.iter()
            .any(|(p, e)| p == "static_resources.chains[0].relay.endpoint"
                && matches!(e, Problem::UnknownRef { .. })),
        "{errs:#?}"
    );
}
// ---- errors for a NACK and from outside the crate ----

#[test]
fn detail_has_no_file_name_and_paths_are_in_order() {
    let e = ConfigErrors::new(
        "/etc/koukan/koukan.yaml",
        vec![
            ConfigError::new("node.id", Problem::Missing),
            ConfigError::new("", Problem::Invalid("whole file".into())),
        ],
    );
    assert_eq!(e.detail(), "node.id: must be set\nwhole file");
    assert_eq!(
        e.to_string(),
        "/etc/koukan/koukan.yaml: node.id: must be set\n/etc/koukan/koukan.yaml: whole file"
    );
    assert_eq!(e.paths().collect::<Vec<_>>(), ["node.id", ""]);
}

#[test]
fn errors_found_outside_the_crate_use_the_same_type() {
    // What the proxy's snapshot build reports for a certificate that does
    // not parse.
    let path = "static_resources.listeners[0].smtp.tls.cert";
    let e = ConfigErrors::one(
        "koukan.yaml",
        path,
        Problem::Load {
            what: "certificate",
            value: "certs/mx.crt".into(),
            reason: "no certificate in PEM".into(),
        },
    );
    assert_eq!(
        e,
        ConfigErrors {
            file: PathBuf::from("koukan.yaml"),
            errors: vec![ConfigError {
                path: path.into(),
                problem: Problem::Load {
                    what: "certificate",
                    value: "certs/mx.crt".into(),
                    reason: "no certificate in PEM".into(),
                },
            }],
        }
    );
    assert_eq!(
        e.to_string(),
        format!("koukan.yaml: {path}: cannot load certificate certs/mx.crt: no certificate in PEM")
    );
    assert_eq!(
        e.detail(),
        format!("{path}: cannot load certificate certs/mx.crt: no certificate in PEM")
    );
    assert_eq!(Problem::Invalid("x y".into()).to_string(), "x y");
}

#[test]
fn error_types_can_be_kept_compared_and_sent() {
    fn structured<T: Clone + Eq + std::fmt::Debug + std::fmt::Display + Send + Sync + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    structured::<Problem>();
    structured::<ConfigError>();
    structured::<ConfigErrors>();
    error::<Problem>();
    error::<ConfigErrors>();
}

// ---- pure checks and local checks ----

/// The quickstart with an SMTP listener that names a TLS pair and an AUTH
/// secrets file, and an endpoint with a CA file, at the given paths.
fn with_files(cert: &str, key: &str, secrets: &str, ca_file: &str) -> Bootstrap {
    let mut b = quickstart();
    let l = smtp_listener(&mut b, 0);
    l.tls = Some(Tls {
        cert: cert.into(),
        key: key.into(),
    });
    l.auth = Some(SmtpAuth {
        secrets: secrets.into(),
        ..Default::default()
    });
    let mut e = smtp_endpoint("relay", vec![hp("relay.example.com", 25)]);
    let Some(endpoint::Endpoint::Smtp(s)) = e.endpoint.as_mut() else {
        panic!()
    };
    s.ca_file = ca_file.into();
    res(&mut b).endpoints.push(e);
    b
}

const L0: &str = "static_resources.listeners[0].smtp";
const E1: &str = "static_resources.endpoints[1].smtp";

#[test]
fn pure_check_ignores_missing_files_but_reports_a_bad_reference() {
    let dir = Dir::new();
    let mut b = with_files("certs/x.crt", "certs/x.key", "secrets.json", "ca.pem");
    smtp_listener(&mut b, 0).sender = "ghost".into();

    let pure = validate_pure(&b).unwrap_err();
    assert_eq!(
        pure,
        vec![ConfigError::new(
            format!("{L0}.sender"),
            Problem::UnknownRef {
                kind: "sender",
                name: "ghost".into()
            }
        )]
    );

    // The local check reports the files, and only them.
    let local = check_local(&dir.config(), &b).unwrap_err();
    assert_eq!(local.file, dir.config());
    let not_found = |path: String, value: &str| {
        ConfigError::new(
            path,
            Problem::FileNotFound {
                value: value.into(),
                resolved: dir.dir.path().join(value),
            },
        )
    };
    assert_eq!(
        local.errors,
        vec![
            not_found(format!("{L0}.tls.cert"), "certs/x.crt"),
            not_found(format!("{L0}.tls.key"), "certs/x.key"),
            not_found(format!("{L0}.auth.secrets"), "secrets.json"),
            not_found(format!("{E1}.ca_file"), "ca.pem"),
        ]
    );

    // validate is both, in the order of the config: the listener's sender
    // before its files.
    let all = validate(&dir.config(), &b).unwrap_err();
    let mut expected = pure.clone();
    expected.extend(local.errors.iter().cloned());
    assert_eq!(all.errors, expected);

    // With the files in place only the reference is left, in both
    // validate and the pure check.
    for f in ["certs/x.crt", "certs/x.key", "ca.pem"] {
        dir.file(f, PEM);
    }
    dir.file("secrets.json", "{}");
    assert_eq!(check_local(&dir.config(), &b), Ok(()));
    assert_eq!(validate(&dir.config(), &b).unwrap_err().errors, pure);
}

#[test]
fn pure_check_does_not_look_at_files() {
    // Every file named here fails the local check: a directory is not a
    // readable file, DER is not PEM. The pure check has no config file to
    // resolve them against and must not open them.
    let dir = Dir::new();
    dir.file("key.der", "\x30\x03binary");
    let here = dir.dir.path().to_str().unwrap().to_owned();
    let der = format!("{here}/key.der");
    let b = with_files(&here, &der, &here, &der);
    assert_eq!(validate_pure(&b), Ok(()));

    let local = check_local(&dir.config(), &b).unwrap_err();
    let found: Vec<(&str, &Problem)> = local
        .errors
        .iter()
        .map(|e| (e.path.as_str(), &e.problem))
        .collect();
    assert!(
        matches!(
            found[..],
            [
                (_, Problem::FileUnreadable { .. }),
                (_, Problem::NotPem { .. }),
                (_, Problem::FileUnreadable { .. }),
                (_, Problem::NotPem { .. }),
            ]
        ),
        "{local}"
    );
    assert_eq!(
        local.paths().collect::<Vec<_>>(),
        [
            format!("{L0}.tls.cert"),
            format!("{L0}.tls.key"),
            format!("{L0}.auth.secrets"),
            format!("{E1}.ca_file"),
        ]
    );
}

#[test]
fn local_check_ignores_pure_errors() {
    // Half a TLS pair, no secrets, a bad address and reference: all pure;
    // with no file named there is nothing for the local check to do.
    let mut b = with_files("", "certs/x.key", "", "");
    res(&mut b).listeners[0].address = "nowhere".into();
    smtp_listener(&mut b, 0).sender = "ghost".into();
    assert_eq!(
        check_local(Path::new("/nonexistent/koukan.yaml"), &b),
        Ok(())
    );
    let pure = validate_pure(&b).unwrap_err();
    assert_eq!(
        pure.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        [
            "static_resources.listeners[0].address",
            &format!("{L0}.sender"),
            &format!("{L0}.tls.cert"),
            &format!("{L0}.auth.secrets"),
        ]
    );
    // validate adds nothing to them.
    assert_eq!(
        validate(Path::new("/nonexistent/koukan.yaml"), &b)
            .unwrap_err()
            .errors,
        pure
    );
}

#[test]
fn example_mx_gateway_is_pure_valid_and_only_fails_locally() {
    let path = example("mx-gateway.yaml");
    let b = parse_bootstrap(&path, &std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(validate_pure(&b), Ok(()));
    assert_eq!(
        check_local(&path, &b).unwrap_err(),
        validate(&path, &b).unwrap_err()
    );
}

// ---- listener kinds ----

#[test]
fn http_listener_on_loopback_is_valid() {
    let yaml = QUICKSTART.replace(
        "  senders:",
        "  - name: api\n    address: 127.0.0.1:8080\n    http: {session_uri: \"http://127.0.0.1:8080\"}\n  senders:",
    );
    let b = parse(&yaml).unwrap();
    assert!(matches!(
        b.static_resources.as_ref().unwrap().listeners[1].protocol,
        Some(listener::Protocol::Http(_))
    ));
    assert_eq!(check(&b), vec![]);
}

#[test]
fn http_listener_problems_name_their_fields() {
    let yaml = QUICKSTART.replace(
        "  senders:",
        "  - name: api\n    address: 0.0.0.0:8080\n    http:\n      session_uri: \"ftp://x\"\n      service_uri: \"http://ok:1/p\"\n      senders: [nobody]\n      tls: {cert: c.pem}\n      limits: {max_header_bytes: 100, pending_timeout: -1s}\n  senders:",
    );
    let b = parse(&yaml).unwrap();
    let paths: Vec<String> = check(&b).into_iter().map(|e| e.0).collect();
    assert_eq!(
        paths,
        [
            "static_resources.listeners[1].http.session_uri",
            "static_resources.listeners[1].http.senders[0]",
            "static_resources.listeners[1].http.tls.key",
            "static_resources.listeners[1].http.api_keys",
            "static_resources.listeners[1].http.limits.pending_timeout",
            "static_resources.listeners[1].http.limits.max_header_bytes",
        ]
    );
    // Keys, or an explicit opt-out, make a public address acceptable.
    let mut b = b;
    let Some(listener::Protocol::Http(h)) = &mut res(&mut b).listeners[1].protocol else {
        unreachable!()
    };
    h.allow_unauthenticated = true;
    assert!(!check(&b).iter().any(|e| e.0.ends_with("api_keys")));
}

#[test]
fn http_listener_needs_storage() {
    let yaml = QUICKSTART.replace(
        "  senders:",
        "  - name: api\n    address: 127.0.0.1:8080\n    http: {}\n  senders:",
    );
    let mut b = parse(&yaml).unwrap();
    b.storage = None;
    let errs = check(&b);
    assert!(
        errs.contains(&(
            "static_resources.listeners[1].http".to_owned(),
            Problem::NeedsStorage
        )),
        "{errs:?}"
    );
}

#[test]
fn listener_without_protocol_from_yaml() {
    // No protocol key, and a protocol key with no value (YAML null): both
    // leave the oneof unset, and both are refused rather than skipped.
    for listener in ["", "\n    smtp:"] {
        let yaml = QUICKSTART.replace(
            "  senders:",
            &format!("  - name: other\n    address: 127.0.0.1:2526{listener}\n  senders:"),
        );
        let b = parse(&yaml).unwrap();
        let e = validate(Path::new("koukan.yaml"), &b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "koukan.yaml: static_resources.listeners[1]: must set one of: smtp, http",
            "{listener:?}"
        );
    }
}

#[test]
fn message_parse_filter_is_checked() {
    let dir = Dir::new();
    dir.file("spool/.keep", "");
    let with = |extra: &str| {
        QUICKSTART.replace(
            "    - received_header:\n",
            &format!("    - message_parse: {extra}\n    - received_header:\n"),
        )
    };
    let b = parse(&with(
        r#"{max_header_bytes: 1000, reject: {code: 550, text: "5.6.0 bad header"}, spool_dir: spool}"#,
    ))
    .unwrap();
    let Some(filter::Filter::MessageParse(m)) =
        &b.static_resources.as_ref().unwrap().chains[0].filters[0].filter
    else {
        panic!("not message_parse");
    };
    assert_eq!(m.max_header_bytes, 1000);
    assert_eq!(m.reject.as_ref().unwrap().code, 550);
    assert_eq!(check_in(&dir, &b), vec![]);
    // `{}` is a valid filter: record only, the system temp dir.
    assert_eq!(check(&parse(&with("{}")).unwrap()), vec![]);

    let b = parse(&with("{reject: {code: 250}, spool_dir: nowhere}")).unwrap();
    let errs = check_in(&dir, &b);
    let p = "static_resources.chains[0].filters[0].message_parse";
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(
        errs[0],
        (format!("{p}.reject.code"), Problem::BadReplyCode(250))
    );
    assert_eq!(errs[1].0, format!("{p}.spool_dir"));
    assert!(matches!(&errs[1].1, Problem::NotADirectory { value, .. } if value == "nowhere"));
}
