//! Recipient routing (`router` filter): chooses each recipient's
//! destination, or rejects it.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use koukan_chain::chain::Split;
use koukan_chain::transaction::{Destination, Hosts, Mailbox, Response, TxUpdate, UpdateResponse};

/// How a router decides per recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoutingPolicy {
    /// Matches recipients by domain and local part.
    AddressList(AddressList),
    /// Routes a recipient to the MX of its own domain.
    DestDomain { endpoint: String, port: u16 },
}

/// `address_list` policy. Empty `domains` or `prefixes` match anything.
/// Lists are compared lower-cased.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressList {
    pub domains: Vec<String>,
    pub prefixes: Vec<String>,
    /// With `+`, the prefix `bob` matches `bob` and `bob+anything`.
    pub delimiter: Option<char>,
    /// Where matching recipients go; `None` rejects them.
    pub destination: Option<Arc<Destination>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterConfig {
    pub policy: Option<RoutingPolicy>,
    /// Without a policy: where every recipient goes (`None` rejects all,
    /// the idiomatic terminator after other routers).
    pub destination: Option<Arc<Destination>>,
}

/// The outcome for one recipient.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Route(Arc<Destination>),
    Reject(Response),
    /// Not this router's business: left for a later router.
    Pass,
}

fn mailbox_does_not_exist(who: &str) -> Response {
    Response::new(550, format!("5.1.1 mailbox does not exist ({who})"))
}

/// A syntactic check of an RFC 5321 mailbox (dot-atom or quoted local part,
/// a domain or address literal). UTF-8 is allowed (SMTPUTF8).
pub fn is_valid_mailbox(addr: &str) -> bool {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    if local.is_empty() || domain.is_empty() || local.len() > 64 || domain.len() > 255 {
        return false;
    }
    let local_ok = if local.starts_with('"') {
        local.len() >= 2 && local.ends_with('"')
    } else {
        !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.chars().all(|c| {
                !c.is_ascii() || c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c)
            })
    };
    let domain_ok = if domain.starts_with('[') {
        domain.ends_with(']')
    } else {
        domain.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| !c.is_ascii() || c.is_ascii_alphanumeric() || c == '-')
        })
    };
    local_ok && domain_ok
}

impl AddressList {
    fn matches(&self, mailbox: &Mailbox) -> bool {
        if !is_valid_mailbox(&mailbox.address) {
            return false;
        }
        let (Some(local), Some(domain)) = (mailbox.local_part(), mailbox.domain()) else {
            return false;
        };
        let domain = domain.to_lowercase();
        let local = local.to_lowercase();
        if !self.domains.is_empty() && !self.domains.contains(&domain) {
            return false;
        }
        if self.prefixes.is_empty() {
            return true;
        }
        let base = match self.delimiter {
            Some(d) => local.split(d).next().unwrap_or(&local),
            None => &local,
        };
        self.prefixes.iter().any(|p| p == base)
    }
}

impl RouterConfig {
    fn decide(&self, mailbox: &Mailbox) -> Decision {
        match &self.policy {
            Some(RoutingPolicy::AddressList(list)) => {
                if !list.matches(mailbox) {
                    return Decision::Pass;
                }
                match &list.destination {
                    Some(d) => Decision::Route(d.clone()),
                    None => Decision::Reject(mailbox_does_not_exist("address_list")),
                }
            }
            Some(RoutingPolicy::DestDomain { endpoint, port }) => {
                if !is_valid_mailbox(&mailbox.address) {
                    return Decision::Pass;
                }
                let domain = mailbox.domain().unwrap_or_default().to_lowercase();
                Decision::Route(Arc::new(Destination {
                    endpoint: endpoint.clone(),
                    hosts: Hosts::Mx {
                        domain,
                        port: *port,
                    },
                }))
            }
            None => match &self.destination {
                Some(d) => Decision::Route(d.clone()),
                None => Decision::Reject(mailbox_does_not_exist("router")),
            },
        }
    }

    /// A destination that does not depend on the recipient.
    fn static_destination(&self) -> Option<&Arc<Destination>> {
        match self.policy {
            None => self.destination.as_ref(),
            Some(_) => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RouterLayer {
    config: Arc<RouterConfig>,
}

impl RouterLayer {
    pub fn new(config: Arc<RouterConfig>) -> Self {
        Self { config }
    }
}

impl<S> Layer<S> for RouterLayer {
    type Service = Router<S>;

    fn layer(&self, inner: S) -> Router<S> {
        Router {
            config: self.config.clone(),
            inner,
        }
    }
}

pub struct Router<S> {
    config: Arc<RouterConfig>,
    inner: S,
}

impl<S> Service<TxUpdate> for Router<S>
where
    S: Service<TxUpdate, Response = UpdateResponse, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = UpdateResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<UpdateResponse, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut update: TxUpdate) -> Self::Future {
        if update.mail_from.is_some() && update.route_hint.is_none() {
            update.route_hint = self.config.static_destination().cloned();
        }
        let mut split = Split::new();
        let rcpts = std::mem::take(&mut update.rcpt_to);
        for mut rcpt in rcpts {
            if rcpt.route.is_some() {
                split.forward();
                update.rcpt_to.push(rcpt);
                continue;
            }
            match self.config.decide(&rcpt.mailbox) {
                Decision::Route(d) => {
                    rcpt.route = Some(d);
                    split.forward();
                    update.rcpt_to.push(rcpt);
                }
                Decision::Pass => {
                    split.forward();
                    update.rcpt_to.push(rcpt);
                }
                Decision::Reject(resp) => split.answer(resp),
            }
        }
        let fut = self.inner.call(update);
        Box::pin(async move {
            let mut resp = fut.await?;
            resp.rcpts = split.merge(std::mem::take(&mut resp.rcpts));
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use koukan_chain::transaction::Recipient;
    use tower::ServiceExt;

    /// A terminal that answers each recipient with 250 and its route's
    /// endpoint name, so tests can see what the router decided.
    #[derive(Clone)]
    struct Echo;

    impl Service<TxUpdate> for Echo {
        type Response = UpdateResponse;
        type Error = Infallible;
        type Future = futures::future::Ready<Result<UpdateResponse, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, u: TxUpdate) -> Self::Future {
            let rcpts = u
                .rcpt_to
                .iter()
                .map(|r: &Recipient| match &r.route {
                    Some(d) => Response::new(250, format!("{} {:?}", d.endpoint, d.hosts)),
                    None => Response::new(599, "unrouted"),
                })
                .collect();
            let mail = u.mail_from.as_ref().map(|_| {
                Response::new(
                    250,
                    u.route_hint
                        .as_ref()
                        .map(|d| d.endpoint.clone())
                        .unwrap_or_default(),
                )
            });
            futures::future::ready(Ok(UpdateResponse {
                mail,
                rcpts,
                data: None,
            }))
        }
    }

    fn dest(name: &str) -> Arc<Destination> {
        Arc::new(Destination {
            endpoint: name.into(),
            hosts: Hosts::EndpointDefault,
        })
    }

    async fn route(layers: Vec<RouterConfig>, rcpts: &[&str]) -> Vec<Response> {
        let mut svc = koukan_chain::boxed(Echo);
        for cfg in layers.into_iter().rev() {
            svc = koukan_chain::boxed(RouterLayer::new(Arc::new(cfg)).layer(svc));
        }
        let u = TxUpdate::rcpts(rcpts.iter().map(|a| Mailbox::new(*a)));
        svc.oneshot(u).await.unwrap().rcpts
    }

    #[tokio::test]
    async fn address_list_with_delimiter_then_reject_rest() {
        let list = RouterConfig {
            policy: Some(RoutingPolicy::AddressList(AddressList {
                domains: vec!["example.com".into()],
                prefixes: vec!["bob".into()],
                delimiter: Some('+'),
                destination: Some(dest("inbox")),
            })),
            destination: None,
        };
        let reject_rest = RouterConfig::default();
        let got = route(
            vec![list, reject_rest],
            &[
                "bob@example.com",
                "Bob+tag@EXAMPLE.com",
                "bobby@example.com",
                "bob@other.com",
                "not an address",
            ],
        )
        .await;
        let codes: Vec<u16> = got.iter().map(|r| r.code).collect();
        assert_eq!(codes, [250, 250, 550, 550, 550]);
        assert!(got[0].text.starts_with("inbox"));
        assert_eq!(got[2].text, "5.1.1 mailbox does not exist (router)");
    }

    #[tokio::test]
    async fn address_list_without_destination_rejects_matches() {
        let cfg = RouterConfig {
            policy: Some(RoutingPolicy::AddressList(AddressList {
                prefixes: vec!["postmaster".into()],
                ..Default::default()
            })),
            destination: None,
        };
        let got = route(vec![cfg], &["postmaster@x.org", "alice@x.org"]).await;
        assert_eq!(got[0].code, 550);
        assert_eq!(got[0].text, "5.1.1 mailbox does not exist (address_list)");
        assert_eq!(got[1].code, 599, "unmatched passes through unrouted");
    }

    #[tokio::test]
    async fn dest_domain_routes_to_mx_of_rcpt_domain() {
        let cfg = RouterConfig {
            policy: Some(RoutingPolicy::DestDomain {
                endpoint: "internet".into(),
                port: 2525,
            }),
            destination: None,
        };
        let got = route(vec![cfg], &["a@Mail.Example.ORG"]).await;
        assert_eq!(got[0].code, 250);
        assert!(got[0].text.contains("mail.example.org"), "{}", got[0].text);
        assert!(got[0].text.contains("2525"));
    }

    #[tokio::test]
    async fn static_destination_hints_at_mail_time() {
        let cfg = RouterConfig {
            policy: None,
            destination: Some(dest("smarthost")),
        };
        let mut svc = RouterLayer::new(Arc::new(cfg)).layer(Echo);
        let resp = svc
            .call(TxUpdate::mail(Mailbox::new("a@b.c")))
            .await
            .unwrap();
        assert_eq!(resp.mail.unwrap().text, "smarthost");
    }

    #[test]
    fn mailbox_syntax() {
        assert!(is_valid_mailbox("a.b+c@example.com"));
        assert!(is_valid_mailbox("用户@例子.广告"));
        assert!(is_valid_mailbox("\"quoted local\"@x.y"));
        assert!(!is_valid_mailbox("a..b@x.y"));
        assert!(!is_valid_mailbox("a@-x.y"));
        assert!(!is_valid_mailbox("noat"));
        assert!(!is_valid_mailbox("a b@x.y"));
    }
}
