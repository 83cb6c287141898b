//! Our own SMTP client (koukan-smtp-client) as the sending peer: PIPELINING
//! and BDAT against the koukan listener, relayed to smtp-sink.

use std::sync::Arc;
use std::time::Duration;

use koukan_chain::{HostPort, Hosts, Mailbox, TxUpdate};
use koukan_integration::*;
use koukan_smtp_client::{ClientConfig, Resolver, SmtpClient, TlsMode};
use tower::{Service, ServiceExt};

#[test]
fn own_client_sends_with_bdat_through_koukan() {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&sink_dir.path().join("sink"), &[]).unwrap();
    let smtp = loopback(free_port());
    let _k = Koukan::start(&relay_config(smtp, sink.addr, "{}")).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = Arc::new(ClientConfig {
            ehlo_hostname: "own-client.test".into(),
            tls: TlsMode::Disabled,
            use_chunking: true,
            ..ClientConfig::default()
        });
        let tls = koukan_smtp_client::tls_client_config(false, None).unwrap();
        let hosts = Hosts::Static(vec![HostPort {
            host: smtp.ip().to_string(),
            port: smtp.port(),
        }]);
        let mut client = SmtpClient::new(cfg, Resolver::new(vec![]), tls, hosts);

        let mut first =
            TxUpdate::mail(Mailbox::new("own@example.com").with_param("BODY", Some("8BITMIME")));
        first.rcpt_to =
            TxUpdate::rcpts([Mailbox::new("a@example.net"), Mailbox::new("b@example.net")]).rcpt_to;
        let r = client.ready().await.unwrap().call(first).await.unwrap();
        assert!(r.mail.as_ref().unwrap().is_ok(), "{r:?}");
        assert!(r.rcpts.iter().all(|x| x.is_ok()), "{r:?}");

        // Three chunks, the middle one starting with a dot: BDAT carries it raw.
        for (data, last) in [
            (&b"Subject: own client\r\n\r\nfirst line\r\n"[..], false),
            (&b".dot line\r\n"[..], false),
            ("caf\u{e9} last line\r\n".as_bytes(), true),
        ] {
            let r = client
                .ready()
                .await
                .unwrap()
                .call(TxUpdate::body(data.to_vec(), last))
                .await
                .unwrap();
            if last {
                let data = r.data.expect("final reply");
                assert!(data.is_ok(), "{data}");
            } else {
                assert!(r.data.is_none(), "{r:?}");
            }
        }
    });
    let msgs = sink.wait_messages(1, Duration::from_secs(5));
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.matches("X-Rcpt-Args: <").count(), 2, "{m}");
    assert!(
        m.contains("\n.dot line\r\n") || m.contains("\n.dot line\n"),
        "{m}"
    );
    assert!(m.contains("caf\u{e9} last line"), "{m}");
    assert!(m.contains("Received: from own-client.test"), "{m}");
}
