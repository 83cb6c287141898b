//! What a DNS failure means to the SMTP client that sent the recipient:
//! the reply code and enhanced status code (RFC 3463, RFC 7505). Kept
//! here, not in koukan-dns, because the resolver also serves policy
//! filters, for which the same failure means something else (an SPF
//! `temperror`, say).

use koukan_chain::transaction::Response;
use koukan_dns::ResolveError;

/// The SMTP reply for a recipient whose domain failed to resolve.
pub(crate) fn reply(err: &ResolveError) -> Response {
    match err {
        // RFC 7505 4.2 / RFC 7504 5.1.10.
        ResolveError::NullMx { .. } => Response::new(
            556,
            "5.1.10 recipient domain does not accept mail (null MX)",
        ),
        // RFC 3463 X.1.2: bad destination system address.
        ResolveError::NxDomain { .. } | ResolveError::InvalidName { .. } => {
            Response::new(550, format!("5.1.2 bad destination domain: {err}"))
        }
        // X.4.4: unable to route.
        ResolveError::NoAddresses { .. } => {
            Response::new(550, format!("5.4.4 unable to route: {err}"))
        }
        // X.4.3: directory server failure.
        ResolveError::Temporary { .. } => Response::new(451, format!("4.4.3 {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let r = reply(&ResolveError::NullMx {
            domain: "x.test".into(),
        });
        assert_eq!(
            r,
            Response::new(
                556,
                "5.1.10 recipient domain does not accept mail (null MX)"
            )
        );
        let r = reply(&ResolveError::NxDomain {
            name: "x.test".into(),
        });
        assert_eq!(
            r,
            Response::new(550, "5.1.2 bad destination domain: x.test: no such domain")
        );
        let r = reply(&ResolveError::InvalidName {
            name: "a..b".into(),
            reason: "empty label".into(),
        });
        assert_eq!(r.code, 550);
        let r = reply(&ResolveError::NoAddresses {
            name: "x.test".into(),
        });
        assert_eq!(
            r,
            Response::new(550, "5.4.4 unable to route: x.test: no address records")
        );
        let r = reply(&ResolveError::Temporary {
            name: "x".into(),
            reason: "y".into(),
        });
        assert_eq!(r, Response::new(451, "4.4.3 x: temporary DNS failure: y"));
    }
}
