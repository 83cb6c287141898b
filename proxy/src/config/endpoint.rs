//! Endpoints: where a chain's relay delivers (an SMTP client with its
//! connection pool, a maildir, or a receiving application over HTTP).

use std::path::Path;

use koukan_proto::config::v1 as pb;
use koukan_smtp_client::{ClientConfig, TlsMode};

use crate::delivery::rest_output::{self, ReceiveParsing, RestConfig};

use super::{duration, host_ports, nonzero, resolve};

pub fn client_config(config_file: &Path, e: &pb::SmtpEndpoint) -> ClientConfig {
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

/// A `rest` endpoint's settings; `Err` if its URL does not parse (which
/// validation has ruled out).
pub fn rest_config(config_file: &Path, e: &pb::RestEndpoint) -> Result<RestConfig, String> {
    let url = reqwest::Url::parse(&e.url).map_err(|err| format!("{:?}: {err}", e.url))?;
    let d = RestConfig::new(url);
    Ok(RestConfig {
        sender: (!e.sender_name.is_empty()).then(|| koukan_rest::SenderRef {
            name: Some(e.sender_name.clone()),
            tag: (!e.sender_tag.is_empty()).then(|| e.sender_tag.clone()),
        }),
        rcpt_timeout: duration(&e.rcpt_timeout, d.rcpt_timeout),
        data_timeout: duration(&e.data_timeout, d.data_timeout),
        chunk_size: e.chunk_size,
        verify_certificates: e.verify_certificates.unwrap_or(true),
        ca_file: (!e.ca_file.is_empty()).then(|| resolve(config_file, &e.ca_file)),
        send_filter_output: e.send_filter_output,
        receive_parsing: e.receive_parsing.as_ref().map(|p| ReceiveParsing {
            max_inline: nonzero(p.max_inline as usize, rest_output::DEFAULT_MAX_INLINE),
        }),
        max_redirects: e
            .max_redirects
            .unwrap_or(rest_output::DEFAULT_MAX_REDIRECTS),
        ..d
    })
}
