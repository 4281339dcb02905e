//! Header hygiene at the proxy boundary: hop-by-hop stripping (RFC 9110 §7.6.1) and the
//! `Host` checks hyper leaves to us (two `Host`s, a missing one, absolute-form disagreement).

use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Version};

use crate::error::ProxyError;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// `value` marked never to be indexed by HPACK, for a value each request has its own (request
/// and trace ids). Such a value can never be found again in an HTTP/2 connection's dynamic
/// table: indexing it costs an insert and evicts fields that do repeat (measured: 5k
/// instructions per request for a request id over h2c, about a tenth of the exchange). HTTP/1.1
/// ignores the mark.
pub fn never_indexed(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// Removes hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Transfer-Encoding`, `Upgrade` (unless this exchange is an upgrade), `Proxy-*`, and `TE`
/// except its `trailers` token (gRPC needs it end to end).
///
/// On the request path twice per exchange, so it first looks at the names present in one pass
/// (most messages carry none of these, or only `Connection: keep-alive`) and only then edits.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let (mut connection, mut keep_alive, mut te, mut transfer_encoding, mut upgrade_hdr, mut proxy) =
        (false, false, false, false, false, false);
    for name in headers.keys() {
        if *name == CONNECTION {
            connection = true;
        } else if *name == TE {
            te = true;
        } else if *name == TRANSFER_ENCODING {
            transfer_encoding = true;
        } else if *name == UPGRADE {
            upgrade_hdr = true;
        } else if *name == KEEP_ALIVE {
            keep_alive = true;
        } else if name.as_str().starts_with("proxy-") {
            proxy = true;
        }
    }
    if connection {
        strip_connection(headers, upgrade);
    }
    if keep_alive {
        headers.remove(KEEP_ALIVE);
    }
    if transfer_encoding {
        headers.remove(TRANSFER_ENCODING);
    }
    if upgrade_hdr && !upgrade {
        headers.remove(UPGRADE);
    }
    if te {
        let trailers = headers.get_all(TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
        if trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(TE);
        }
    }
    if proxy {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for k in names {
            headers.remove(k);
        }
    }
}

/// Removes `Connection` and the headers it names. The usual tokens (`keep-alive`, `close`,
/// `upgrade`) name no header to remove beyond those handled anyway, so they cost no parsing.
fn strip_connection(headers: &mut HeaderMap, upgrade: bool) {
    let is_plain = |t: &str| {
        t.is_empty()
            || t.eq_ignore_ascii_case("keep-alive")
            || t.eq_ignore_ascii_case("close")
            || t.eq_ignore_ascii_case("upgrade")
    };
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !is_plain(t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(&n);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(CONNECTION);
    }
}

/// An HTTP/1.1 upgrade request (WebSocket and friends): `Connection: upgrade` plus `Upgrade`.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req.headers().get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// The request's authority, checked: one `Host` at most, required on HTTP/1.1, and agreeing
/// with the absolute-form URI or HTTP/2 `:authority` when both are present.
pub fn authority<B>(req: &Request<B>) -> Result<&str, ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header\n"));
    }
    let host = match host {
        Some(h) => Some(
            h.to_str()
                .map_err(|_| ProxyError::BadRequest("invalid Host header\n"))?,
        ),
        None => None,
    };
    match (req.uri().authority(), host) {
        (Some(a), Some(h)) => {
            if a.as_str().eq_ignore_ascii_case(h) {
                Ok(a.as_str())
            } else {
                Err(ProxyError::BadRequest(
                    "the Host header disagrees with the request target\n",
                ))
            }
        }
        (Some(a), None) => Ok(a.as_str()),
        (None, Some(h)) if !h.is_empty() => Ok(h),
        (None, _) if req.version() == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("missing Host header\n"))
        }
        (None, h) => Ok(h.unwrap_or("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut r = Request::new(());
        *r.version_mut() = version;
        *r.uri_mut() = uri.parse().unwrap_or_default();
        for h in hosts {
            r.headers_mut().append(
                HOST,
                HeaderValue::from_str(h).unwrap_or(HeaderValue::from_static("")),
            );
        }
        r
    }

    #[test]
    fn host_rules() {
        assert_eq!(authority(&req(Version::HTTP_11, "/", &["a.b"])), Ok("a.b"));
        assert!(authority(&req(Version::HTTP_11, "/", &["a", "b"])).is_err());
        assert!(authority(&req(Version::HTTP_11, "/", &[])).is_err());
        assert_eq!(authority(&req(Version::HTTP_10, "/", &[])), Ok(""));
        assert_eq!(
            authority(&req(Version::HTTP_11, "http://a.b/x", &["A.B"])),
            Ok("a.b")
        );
        assert!(authority(&req(Version::HTTP_11, "http://a.b/x", &["c.d"])).is_err());
        assert_eq!(
            authority(&req(Version::HTTP_2, "http://a.b/x", &[])),
            Ok("a.b")
        );
    }

    #[test]
    fn strips_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers, deflate"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "x-keep"]);
        assert_eq!(h[TE], "trailers");

        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("gzip"));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");

        // Headers named by Connection go, whatever their case in the token.
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Keep-Alive, X-Foo"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("x-bar", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-bar"]);
    }

    #[test]
    fn keeps_upgrade_on_upgrade_exchanges() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
    }
}
