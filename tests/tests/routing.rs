//! Routing end to end, as `docs/config.md` specifies it: the real `tern-proxy` binary in front
//! of echo backends on loopback.
//!
//! Covers: matching by host (exact, wildcard at any depth, port ignored, case-insensitive),
//! path (`Exact`, segment-wise `PathPrefix`, whole-path `RegularExpression`), method, headers
//! and query parameters; the ranking of routes (host, path, method, headers, query,
//! declaration order); path normalization (`..`, `%2e`, `%2f`, repeated slashes) and what the
//! upstream receives; weighted splits (90/10 over 10,000 requests, weight 0, a header-pinned
//! canary); the errors the proxy answers itself (`tern-proxy-error`: 404 `no-route`, 503
//! `no-endpoints`, 502 `connect-failed`, 502 `upstream-reset`, 504 `timeout`, 400
//! `bad-request` for bad `Host`s); hop-by-hop header stripping both ways and `Host`
//! preservation; header filters, URL rewrites and redirects; `tern_requests_total`.
//!
//! Most tests build a route table with [`table`]: every route sends to its own echo backend,
//! named like the route, so the `x-backend` response header says which route won.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_e2e::{
    ANY_PORT, Proxy, TestBackend, TestClient, TestResponse, config, free_addr, http1_client,
    http2_client, raw_http1, wait_for,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// The header the proxy sets on every response it writes itself.
const PROXY_ERROR: &str = "tern-proxy-error";

/// Request headers as `(name, value)` pairs.
type Headers<'a> = &'a [(&'a str, &'a str)];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A proxy with listener `web` whose routes each send to an echo backend named like the
/// route, plus a client that connects to `web` whatever the URL's host says.
struct Table {
    proxy: Proxy,
    client: TestClient,
    _backends: Vec<TestBackend>,
}

/// Starts a [`Table`]. Each route is `(name, fields)`, where `fields` are the route's other
/// YAML flow-style fields (`hostnames: [...], matches: [...]`), without `name` and `backends`.
async fn table(routes: &[(&str, &str)]) -> Table {
    let mut backends = Vec::new();
    let mut yaml = format!("listeners:\n  - name: web\n    address: {ANY_PORT}\n    routes:\n");
    for (name, fields) in routes {
        let separator = if fields.is_empty() { "" } else { ", " };
        yaml.push_str(&format!(
            "      - {{name: {name}{separator}{fields}, backends: [{{name: {name}}}]}}\n"
        ));
        backends.push(TestBackend::echo(name).await);
    }
    yaml.push_str("backends:\n");
    for backend in &backends {
        yaml.push_str(&format!("  - {}\n", backend.yaml()));
    }
    let proxy = Proxy::start(yaml).await;
    let client = http1_client().connect_to(proxy.addr("web"));
    Table {
        proxy,
        client,
        _backends: backends,
    }
}

impl Table {
    /// Which route answered `GET http://{host}{path}`: see [`outcome`].
    async fn get(&self, host: &str, path: &str) -> String {
        self.send("GET", host, path, &[]).await
    }

    /// Which route answered the request: see [`outcome`].
    async fn send(&self, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
        let response = self
            .client
            .send(method, &format!("http://{host}{path}"), headers, "")
            .await;
        outcome(&response)
    }
}

/// The backend that answered (`x-backend`), or `"<status> <tern-proxy-error>"` for an answer
/// of the proxy itself, such as `"404 no-route"`.
fn outcome(response: &TestResponse) -> String {
    match response.backend() {
        Some(backend) => backend.to_owned(),
        None => format!(
            "{} {}",
            response.status.as_u16(),
            response
                .header(PROXY_ERROR)
                .unwrap_or("<no tern-proxy-error>")
        ),
    }
}

/// Asserts that a proxy-written error has this status and `tern-proxy-error`.
fn assert_proxy_error(response: &TestResponse, status: u16, error: &str, what: &str) {
    assert_eq!(
        (response.status.as_u16(), response.header(PROXY_ERROR)),
        (status, Some(error)),
        "{what}: expected {status} with {PROXY_ERROR}: {error}; got headers {:?}, body {:?}",
        response.headers,
        response.text()
    );
    assert_eq!(response.backend(), None, "{what}: the proxy answers itself");
}

/// A config with listener `web` and the given routes (YAML list items at column 0, indented
/// here), and `backends` (YAML list items at column 0).
fn listener_config(routes: &str, backends: &str) -> String {
    let indent = |text: &str, by: &str| -> String {
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| format!("{by}{line}\n"))
            .collect()
    };
    format!(
        "listeners:\n  - name: web\n    address: {ANY_PORT}\n    routes:\n{}backends:\n{}",
        indent(routes, "      "),
        indent(backends, "  ")
    )
}

/// A raw HTTP/1 response, parsed (chunked bodies decoded).
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    text: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The echo backend's JSON; panics with the whole response when it is not one.
    fn echo(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {}", self.text))
    }

    /// What the echo backend saw as the request's path and query.
    fn echo_path(&self) -> String {
        self.echo()["path"].as_str().unwrap_or_default().to_owned()
    }

    /// `backend name`, or `"<status> <tern-proxy-error>"`, as [`outcome`].
    fn outcome(&self) -> String {
        match self.header("x-backend") {
            Some(backend) => backend.to_owned(),
            None => format!(
                "{} {}",
                self.status,
                self.header(PROXY_ERROR).unwrap_or("<no tern-proxy-error>")
            ),
        }
    }
}

/// Sends raw bytes on a fresh connection and parses the one response.
async fn raw(addr: SocketAddr, request: &str) -> Raw {
    let text = raw_http1(addr, request).await;
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head for {request:?}: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {request:?}: {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Raw {
        status,
        headers,
        body,
        text,
    }
}

/// Decodes a chunked body (trailers ignored).
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    // Every round consumes a chunk: the body is finite, and the bound keeps a bad one finite.
    for _ in 0..10_000 {
        let Some((size_line, after)) = rest.split_once("\r\n") else {
            break;
        };
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// `GET target HTTP/1.1` with `Host: host`, sent raw so the path reaches the proxy unchanged.
async fn raw_get(addr: SocketAddr, host: &str, target: &str) -> Raw {
    raw(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 1. Matching
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn exact_hostname_ignores_port_and_case() {
    let t = table(&[("api", "hostnames: [api.example.com]")]).await;
    for host in [
        "api.example.com",
        "api.example.com:8080",
        "API.Example.COM",
        "Api.Example.Com:443",
    ] {
        assert_eq!(t.get(host, "/x").await, "api", "Host: {host}");
    }
    for host in ["example.com", "x.api.example.com", "api.example.org"] {
        assert_eq!(t.get(host, "/x").await, "404 no-route", "Host: {host}");
    }
}

#[tokio::test]
async fn wildcard_hostname_matches_any_depth_but_not_the_bare_domain() {
    let t = table(&[("wild", r#"hostnames: ["*.example.com"]"#)]).await;
    for host in [
        "a.example.com",
        "a.b.example.com",
        "x.y.z.example.com:8443",
        "A.B.EXAMPLE.com",
    ] {
        assert_eq!(t.get(host, "/").await, "wild", "Host: {host}");
    }
    for host in ["example.com", "notexample.com", "a.example.com.evil.org"] {
        assert_eq!(t.get(host, "/").await, "404 no-route", "Host: {host}");
    }
}

#[tokio::test]
async fn host_routing_over_http2_uses_the_authority() {
    let t = table(&[
        ("api", "hostnames: [api.example.com]"),
        ("wild", r#"hostnames: ["*.example.com"]"#),
    ])
    .await;
    let h2 = http2_client().connect_to(t.proxy.addr("web"));
    let r = h2.get("http://API.example.com:9999/x").await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(outcome(&r), "api");
    let r = h2.get("http://deep.sub.example.com/x").await;
    assert_eq!(outcome(&r), "wild");
    let r = h2.get("http://example.net/x").await;
    assert_proxy_error(&r, 404, "no-route", "h2 request for an unknown host");
}

#[tokio::test]
async fn path_prefix_matches_whole_segments() {
    let t = table(&[
        ("api", "matches: [{path: {type: PathPrefix, value: /api}}]"),
        (
            "slash",
            "matches: [{path: {type: PathPrefix, value: /v1/}}]",
        ),
    ])
    .await;
    for path in ["/api", "/api/", "/api/x", "/api/x/y?q=1", "/api?q=1"] {
        assert_eq!(t.get("h.example", path).await, "api", "GET {path}");
    }
    for path in ["/apix", "/api-v2", "/", "/x/api", "/API"] {
        assert_eq!(t.get("h.example", path).await, "404 no-route", "GET {path}");
    }
    // A prefix written with a trailing slash still matches whole segments.
    for path in ["/v1/", "/v1/x"] {
        assert_eq!(t.get("h.example", path).await, "slash", "GET {path}");
    }
    assert_eq!(t.get("h.example", "/v1x").await, "404 no-route", "GET /v1x");
}

#[tokio::test]
async fn exact_and_regex_paths_match_the_whole_path() {
    let t = table(&[
        ("exact", "matches: [{path: {type: Exact, value: /healthz}}]"),
        (
            "regex",
            r#"matches: [{path: {type: RegularExpression, value: "/status/[0-9]+"}}]"#,
        ),
    ])
    .await;
    assert_eq!(t.get("h", "/healthz").await, "exact");
    assert_eq!(
        t.get("h", "/healthz?verbose=1").await,
        "exact",
        "query is not path"
    );
    for path in ["/healthz/", "/healthz/x", "/healthzz", "/x/healthz"] {
        assert_eq!(t.get("h", path).await, "404 no-route", "GET {path}");
    }
    assert_eq!(t.get("h", "/status/42").await, "regex");
    assert_eq!(
        t.get("h", "/status/42?x=a").await,
        "regex",
        "query is not path"
    );
    for path in ["/status/42x", "/x/status/42", "/status/", "/status/42/"] {
        assert_eq!(
            t.get("h", path).await,
            "404 no-route",
            "GET {path}: the regex must match the whole path"
        );
    }
}

#[tokio::test]
async fn method_matches() {
    let t = table(&[("posts", "matches: [{path: {value: /}, method: POST}]")]).await;
    assert_eq!(t.send("POST", "h", "/x", &[]).await, "posts");
    assert_eq!(t.send("GET", "h", "/x", &[]).await, "404 no-route");
    assert_eq!(t.send("PUT", "h", "/x", &[]).await, "404 no-route");
}

#[tokio::test]
async fn header_matches_exact_regex_and_present() {
    let t = table(&[
        ("exact", "matches: [{path: {value: /e}, headers: [{name: x-env, value: prod}]}]"),
        (
            "regex",
            r#"matches: [{path: {value: /r}, headers: [{name: x-ver, type: RegularExpression, value: "v[0-9]+"}]}]"#,
        ),
        (
            "present",
            "matches: [{path: {value: /p}, headers: [{name: x-flag, type: Present}]}]",
        ),
        (
            "both",
            "matches: [{path: {value: /b}, headers: [{name: x-a, value: '1'}, {name: x-b, value: '2'}]}]",
        ),
    ])
    .await;
    let cases: &[(&str, Headers, &str)] = &[
        ("/e", &[("x-env", "prod")], "exact"),
        ("/e", &[("X-Env", "prod")], "exact"),
        ("/e", &[("x-env", "prod2")], "404 no-route"),
        ("/e", &[("x-env", "Prod")], "404 no-route"),
        ("/e", &[], "404 no-route"),
        ("/r", &[("x-ver", "v12")], "regex"),
        ("/r", &[("x-ver", "v12a")], "404 no-route"),
        ("/r", &[("x-ver", "av1")], "404 no-route"),
        ("/p", &[("x-flag", "anything")], "present"),
        ("/p", &[("X-FLAG", "1")], "present"),
        ("/p", &[("x-other", "1")], "404 no-route"),
        ("/b", &[("x-a", "1"), ("x-b", "2")], "both"),
        ("/b", &[("x-a", "1")], "404 no-route"),
        ("/b", &[("x-b", "2")], "404 no-route"),
    ];
    for (path, headers, want) in cases {
        assert_eq!(
            t.send("GET", "h", path, headers).await,
            *want,
            "GET {path} with {headers:?}"
        );
    }
}

#[tokio::test]
async fn query_param_matches() {
    let t = table(&[
        (
            "exact",
            "matches: [{path: {value: /e}, query_params: [{name: v, value: '1'}]}]",
        ),
        (
            "regex",
            r#"matches: [{path: {value: /r}, query_params: [{name: id, type: RegularExpression, value: "[a-f]+"}]}]"#,
        ),
        (
            "present",
            "matches: [{path: {value: /p}, query_params: [{name: debug, type: Present}]}]",
        ),
    ])
    .await;
    let cases = [
        ("/e?v=1", "exact"),
        ("/e?a=b&v=1", "exact"),
        ("/e?v=1&v=2", "exact"),
        ("/e?v=2&v=1", "404 no-route"),
        ("/e?V=1", "404 no-route"),
        ("/e?v=%31", "404 no-route"),
        ("/e?v=10", "404 no-route"),
        ("/e", "404 no-route"),
        ("/r?id=abc", "regex"),
        ("/r?id=abcx", "404 no-route"),
        ("/p?debug=1", "present"),
        ("/p?x=1&debug=", "present"),
        ("/p?debugx=1", "404 no-route"),
    ];
    for (path, want) in cases {
        assert_eq!(t.get("h", path).await, want, "GET {path}");
    }
}

#[tokio::test]
async fn any_match_of_a_route_suffices_and_all_conditions_of_one_must_hold() {
    let t = table(&[(
        "r",
        "matches: [{path: {value: /a}, method: GET}, {path: {value: /b}, headers: [{name: x-k, value: v}]}]",
    )])
    .await;
    assert_eq!(t.send("GET", "h", "/a", &[]).await, "r");
    assert_eq!(t.send("POST", "h", "/b", &[("x-k", "v")]).await, "r");
    assert_eq!(t.send("POST", "h", "/a", &[]).await, "404 no-route");
    assert_eq!(t.send("GET", "h", "/b", &[]).await, "404 no-route");
}

// ---------------------------------------------------------------------------------------------
// 2. Precedence (routes declared worst first, so declaration order cannot explain a win)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn exact_host_beats_wildcard_beats_catch_all() {
    let t = table(&[
        ("any", ""),
        ("wild", r#"hostnames: ["*.example.com"]"#),
        ("deepwild", r#"hostnames: ["*.api.example.com"]"#),
        ("exact", "hostnames: [api.example.com]"),
    ])
    .await;
    assert_eq!(t.get("api.example.com", "/").await, "exact");
    assert_eq!(t.get("API.example.com:81", "/").await, "exact");
    assert_eq!(
        t.get("v1.api.example.com", "/").await,
        "deepwild",
        "the longer wildcard wins"
    );
    assert_eq!(t.get("www.example.com", "/").await, "wild");
    assert_eq!(t.get("example.com", "/").await, "any");
    assert_eq!(t.get("example.org", "/").await, "any");
}

#[tokio::test]
async fn host_ranks_before_path() {
    let t = table(&[
        ("anyhost", "matches: [{path: {type: Exact, value: /api}}]"),
        (
            "wild",
            r#"hostnames: ["*.example.com"], matches: [{path: {value: /}}]"#,
        ),
    ])
    .await;
    assert_eq!(
        t.get("a.example.com", "/api").await,
        "wild",
        "a wildcard host with prefix / beats no host with an Exact path"
    );
    assert_eq!(t.get("other.org", "/api").await, "anyhost");
}

#[tokio::test]
async fn path_precedence_exact_then_longest_prefix_then_regex() {
    let t = table(&[
        (
            "regex",
            r#"matches: [{path: {type: RegularExpression, value: "/(api|v)/.*"}}]"#,
        ),
        ("root", "matches: [{path: {value: /}}]"),
        ("api", "matches: [{path: {value: /api}}]"),
        ("prefix", "matches: [{path: {value: /api/v1}}]"),
        ("exact", "matches: [{path: {type: Exact, value: /api/v1}}]"),
    ])
    .await;
    assert_eq!(
        t.get("h", "/api/v1").await,
        "exact",
        "Exact beats an equal prefix"
    );
    assert_eq!(
        t.get("h", "/api/v1/x").await,
        "prefix",
        "longer prefix beats shorter"
    );
    assert_eq!(t.get("h", "/api/v2").await, "api");
    assert_eq!(t.get("h", "/apiv1").await, "root");
    assert_eq!(
        t.get("h", "/api/7").await,
        "api",
        "a prefix ranks above a regex"
    );
}

/// A regex outranks the catch-all `PathPrefix /` (and matches without a path), whichever is
/// declared first: otherwise a default route would hide every regex route.
#[tokio::test]
async fn regex_ranks_above_the_catch_all_prefix() {
    for order in [["regex", "root"], ["root", "regex"]] {
        let routes: Vec<(&str, &str)> = order
            .iter()
            .map(|name| match *name {
                "regex" => (
                    "regex",
                    r#"matches: [{path: {type: RegularExpression, value: "/(api|v)/.*"}}]"#,
                ),
                _ => ("root", "matches: [{path: {type: PathPrefix, value: /}}]"),
            })
            .collect();
        let t = table(&routes).await;
        assert_eq!(t.get("h", "/v/1").await, "regex", "order {order:?}");
        assert_eq!(t.get("h", "/other").await, "root", "order {order:?}");
    }
}

#[tokio::test]
async fn regex_answers_when_no_prefix_matches() {
    let t = table(&[
        (
            "regex",
            r#"matches: [{path: {type: RegularExpression, value: "/(api|v)/[0-9]+"}}]"#,
        ),
        ("api", "matches: [{path: {value: /api}}]"),
    ])
    .await;
    assert_eq!(t.get("h", "/api/12").await, "api", "prefix beats regex");
    assert_eq!(t.get("h", "/v/12").await, "regex");
}

#[tokio::test]
async fn method_then_headers_then_query_then_declaration_order() {
    let t = table(&[
        ("plain", "matches: [{path: {value: /}}]"),
        ("plain2", "matches: [{path: {value: /}}]"),
        ("query", "matches: [{path: {value: /}, query_params: [{name: q, type: Present}]}]"),
        ("header1", "matches: [{path: {value: /}, headers: [{name: x-a, type: Present}]}]"),
        (
            "header2",
            "matches: [{path: {value: /}, headers: [{name: x-a, type: Present}, {name: x-b, type: Present}]}]",
        ),
        ("method", "matches: [{path: {value: /}, method: DELETE}]"),
        ("longer", "matches: [{path: {value: /long}}]"),
    ])
    .await;
    let both: Headers = &[("x-a", "1"), ("x-b", "1")];
    let cases: &[(&str, &str, Headers, &str, &str)] = &[
        ("GET", "/", &[], "plain", "declaration order breaks ties"),
        ("GET", "/?q=1", &[], "query", "query beats none"),
        (
            "GET",
            "/",
            &[("x-a", "1")],
            "header1",
            "a header beats none",
        ),
        (
            "GET",
            "/?q=1",
            &[("x-a", "1")],
            "header1",
            "headers beat query",
        ),
        ("GET", "/?q=1", both, "header2", "more headers beat fewer"),
        ("DELETE", "/?q=1", both, "method", "method beats headers"),
        (
            "DELETE",
            "/long",
            both,
            "longer",
            "path ranks before method",
        ),
    ];
    for (method, path, headers, want, why) in cases {
        assert_eq!(
            t.send(method, "h", path, headers).await,
            *want,
            "{method} {path} {headers:?}: {why}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Path normalization
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn normalized_paths_route_and_reach_the_upstream() {
    let t = table(&[("api", "matches: [{path: {value: /api}}]")]).await;
    let addr = t.proxy.addr("web");
    // (request target, path and query the backend must see)
    let reach = [
        ("/x/../api", "/api"),
        ("//api//x", "/api/x"),
        ("/api/./x", "/api/x"),
        ("/%2e%2e/api", "/api"),
        ("/%2E%2E/%2E%2E/api/x", "/api/x"),
        ("/x/%2e%2e/api/y", "/api/y"),
        ("/api%2Fx", "/api/x"),
        ("/api%2fx%2F%2E%2e/y", "/api/y"),
        ("/../../api", "/api"),
        ("/a/b/../../api/x?q=%2e%2e/..", "/api/x?q=%2e%2e/.."),
        ("/api/%41%20b", "/api/%41%20b"),
        ("/api/a%2eb", "/api/a.b"),
        ("/api%2F%2Fx", "/api/x"),
    ];
    for (target, want) in reach {
        let r = raw_get(addr, "h.example", target).await;
        assert_eq!(r.outcome(), "api", "GET {target}: {}", r.text);
        assert_eq!(
            r.echo_path(),
            want,
            "what the upstream saw for GET {target}"
        );
    }
    let miss = [
        "/api%2F..",
        "/api%2f%2e%2e",
        "/api/..",
        "/api/x/../../",
        "/apix",
        "/x/..%2Fapix",
    ];
    for target in miss {
        let r = raw_get(addr, "h.example", target).await;
        assert_eq!(
            r.outcome(),
            "404 no-route",
            "GET {target} normalizes outside /api: {}",
            r.text
        );
    }
}

#[tokio::test]
async fn encoded_dots_and_slashes_cannot_bypass_a_more_specific_route() {
    let t = table(&[
        ("open", "matches: [{path: {value: /}}]"),
        ("admin", "matches: [{path: {value: /admin}}]"),
    ])
    .await;
    let addr = t.proxy.addr("web");
    for target in [
        "/admin",
        "/public/../admin",
        "/public/..%2Fadmin",
        "/public%2F%2E%2E%2Fadmin/x",
        "//admin",
        "/./admin",
    ] {
        let r = raw_get(addr, "h.example", target).await;
        assert_eq!(r.outcome(), "admin", "GET {target}: {}", r.text);
        assert!(
            r.echo_path().starts_with("/admin"),
            "GET {target}: upstream saw {}",
            r.echo_path()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Weighted split
// ---------------------------------------------------------------------------------------------

/// Sends `total` GETs over `connections` concurrent keep-alive connections; returns how many
/// each backend answered: `(stable, canary, other)`.
async fn count_split(
    url: &str,
    total: usize,
    connections: usize,
    headers: &'static [(&'static str, &'static str)],
) -> (usize, usize, usize) {
    let client = Arc::new(http1_client());
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..connections {
        let client = client.clone();
        let url = url.to_owned();
        let share = total / connections + usize::from(worker < total % connections);
        tasks.spawn(async move {
            let mut counts = (0, 0, 0);
            for _ in 0..share {
                let r = client.send("GET", &url, headers, "").await;
                match r.backend() {
                    Some("stable") => counts.0 += 1,
                    Some("canary") => counts.1 += 1,
                    _ => counts.2 += 1,
                }
            }
            counts
        });
    }
    let mut sum = (0, 0, 0);
    while let Some(counts) = tasks.join_next().await {
        let counts = counts.expect("a split worker panicked");
        sum.0 += counts.0;
        sum.1 += counts.1;
        sum.2 += counts.2;
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_ten_split_over_ten_thousand_requests() {
    let stable = TestBackend::echo("stable").await;
    let canary = TestBackend::echo("canary").await;
    let proxy = Proxy::start(config::split(&[(&stable, 90), (&canary, 10)])).await;
    let total = 10_000;
    let (s, c, other) = count_split(&proxy.url("web", "/split"), total, 8, &[]).await;
    assert_eq!(other, 0, "every request answered by stable or canary");
    assert_eq!(s + c, total);
    let share = c as f64 * 100.0 / total as f64;
    assert!(
        (8.5..=11.5).contains(&share),
        "canary share {share:.2}% ({c} of {total}), want 10 ± 1.5"
    );
    assert_eq!(stable.requests() + canary.requests(), total);
}

#[tokio::test]
async fn weight_zero_gets_nothing() {
    let a = TestBackend::echo("stable").await;
    let b = TestBackend::echo("canary").await;
    let proxy = Proxy::start(config::split(&[(&a, 1), (&b, 0)])).await;
    let (s, c, other) = count_split(&proxy.url("web", "/"), 300, 3, &[]).await;
    assert_eq!((s, c, other), (300, 0, 0), "(weight 1, weight 0, errors)");
    assert_eq!(b.requests(), 0, "the weight-0 backend was never contacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_pinned_canary_gets_everything_others_split() {
    let stable = TestBackend::echo("stable").await;
    let canary = TestBackend::echo("canary").await;
    let routes = r#"
- name: pinned
  matches: [{path: {value: /}, headers: [{name: x-canary, value: always}]}]
  backends: [{name: canary}]
- name: split
  matches: [{path: {value: /}}]
  backends: [{name: stable, weight: 90}, {name: canary, weight: 10}]
"#;
    let backends = format!("- {}\n- {}\n", stable.yaml(), canary.yaml());
    let proxy = Proxy::start(listener_config(routes, &backends)).await;
    let url = proxy.url("web", "/shop");

    let pinned = count_split(&url, 500, 4, &[("x-canary", "always")]).await;
    assert_eq!(
        pinned,
        (0, 500, 0),
        "x-canary: always → (stable, canary, errors)"
    );

    let other_value = count_split(&url, 100, 2, &[("x-canary", "never")]).await;
    assert_eq!(other_value.2, 0);
    assert!(
        other_value.0 > 0,
        "x-canary: never is split: {other_value:?}"
    );

    let total = 2000;
    let (s, c, other) = count_split(&url, total, 4, &[]).await;
    assert_eq!(other, 0);
    // 10 % of 2000 is 200; binomial σ ≈ 13, so ±100 is far outside chance.
    assert!(
        (100..=300).contains(&c) && s + c == total,
        "unpinned requests split 90/10: stable {s}, canary {c}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Errors the proxy answers itself
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_route_is_404() {
    let t = table(&[("api", "hostnames: [api.example.com]")]).await;
    let r = t.client.get("http://www.example.com/x").await;
    assert_proxy_error(&r, 404, "no-route", "GET for a host without a route");
}

#[tokio::test]
async fn no_endpoints_is_503() {
    let a = TestBackend::echo("a").await;
    let routes = r#"
- name: empty
  matches: [{path: {value: /empty}}]
  backends: [{name: empty}]
- name: zero
  matches: [{path: {value: /zero}}]
  backends: [{name: a, weight: 0}]
"#;
    let backends = format!("- {{name: empty, endpoints: []}}\n- {}\n", a.yaml());
    let proxy = Proxy::start(listener_config(routes, &backends)).await;
    let client = http1_client();
    let r = client.get(&proxy.url("web", "/empty")).await;
    assert_proxy_error(&r, 503, "no-endpoints", "backend with endpoints: []");
    let r = client.get(&proxy.url("web", "/zero")).await;
    assert_proxy_error(&r, 503, "no-endpoints", "every weight 0");
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn refused_connection_is_502_connect_failed() {
    // A port nothing listens on, and that no test server of this process will be given.
    let dead = free_addr();
    let backends = format!("- {{name: dead, endpoints: [\"{dead}\"]}}\n");
    let routes = "- {name: all, backends: [{name: dead}]}\n";
    let proxy = Proxy::start(listener_config(routes, &backends)).await;
    let r = http1_client().get(&proxy.url("web", "/")).await;
    assert_proxy_error(&r, 502, "connect-failed", "endpoint refuses connections");
}

#[tokio::test]
async fn slow_upstream_is_504_timeout_when_the_route_timeout_expires() {
    let slow = TestBackend::builder("slow")
        .delay(Duration::from_secs(2))
        .start()
        .await;
    let routes = "- {name: all, timeout: 200ms, backends: [{name: slow}]}\n";
    let proxy = Proxy::start(listener_config(routes, &format!("- {}\n", slow.yaml()))).await;
    let client = http1_client();
    let started = Instant::now();
    let r = client.get(&proxy.url("web", "/")).await;
    let elapsed = started.elapsed();
    assert_proxy_error(&r, 504, "timeout", "upstream slower than timeout: 200ms");
    assert!(
        elapsed >= Duration::from_millis(200),
        "answered after {elapsed:?}, before the 200ms timeout could expire"
    );
    assert!(
        elapsed < Duration::from_secs(1),
        "answered after {elapsed:?}: the 200ms timeout did not fire"
    );
    assert_eq!(
        slow.requests(),
        1,
        "the request did reach the slow upstream"
    );
}

#[tokio::test]
async fn upstream_closing_before_headers_is_502_upstream_reset() {
    // An upstream that accepts, reads some of the request, and closes without answering.
    let listener = TcpListener::bind(free_addr())
        .await
        .expect("binding the closing upstream");
    let addr = listener.local_addr().expect("local_addr");
    let closer = tokio::spawn(async move {
        // Bounded: the proxy may retry, but not forever; the test ends long before this.
        for _ in 0..16 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    let backends = format!("- {{name: closer, endpoints: [\"{addr}\"]}}\n");
    let routes = "- {name: all, backends: [{name: closer}]}\n";
    let proxy = Proxy::start(listener_config(routes, &backends)).await;
    let r = http1_client().get(&proxy.url("web", "/")).await;
    assert_proxy_error(
        &r,
        502,
        "upstream-reset",
        "upstream closed before answering",
    );
    closer.abort();
}

// ---------------------------------------------------------------------------------------------
// 6. Bad Host
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_host_is_400_and_http10_without_host_is_routed() {
    let t = table(&[("named", "hostnames: [a.example]"), ("any", "")]).await;
    let addr = t.proxy.addr("web");
    let bad = [
        (
            "two Host headers",
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "two identical Host headers",
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "HTTP/1.1 without Host",
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "absolute-form target disagreeing with Host",
            "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (what, request) in bad {
        let r = raw(addr, request).await;
        assert_eq!(
            (r.status, r.header(PROXY_ERROR)),
            (400, Some("bad-request")),
            "{what}: {}",
            r.text
        );
        assert_eq!(r.header("x-backend"), None, "{what}: no backend answered");
    }

    let r = raw(addr, "GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.outcome(), "any", "HTTP/1.0 without Host: {}", r.text);
    assert_eq!(r.echo_path(), "/old");

    let r = raw(
        addr,
        "GET http://a.example/abs HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        r.outcome(),
        "named",
        "absolute-form agreeing with Host: {}",
        r.text
    );
    assert_eq!(r.echo_path(), "/abs");
}

#[tokio::test]
async fn http2_authority_disagreeing_with_host_is_400() {
    let t = table(&[("any", "")]).await;
    let h2 = tern_e2e::h2_connect(t.proxy.addr("web"))
        .await
        .expect("h2c connection to the proxy");
    let send = async |authority: &str, host: &str| -> (u16, Option<String>) {
        let request = http::Request::get(format!("http://{authority}/h2"))
            .header("host", host)
            .body(())
            .expect("request");
        let mut ready = h2.clone().ready().await.expect("h2 ready");
        let (response, _) = ready
            .send_request(request, true)
            .expect("sending the request");
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("an answer within 5s")
            .expect("a response");
        let error = response
            .headers()
            .get(PROXY_ERROR)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (response.status().as_u16(), error)
    };
    assert_eq!(
        send("a.example", "b.example").await,
        (400, Some("bad-request".to_owned())),
        ":authority a.example with Host: b.example"
    );
    assert_eq!(
        send("a.example", "a.example").await,
        (200, None),
        ":authority and Host agree"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Hop-by-hop headers and Host
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hop_by_hop_request_headers_are_stripped() {
    let a = TestBackend::echo("a").await;
    let proxy = Proxy::start(config::simple(&[&a])).await;
    let r = raw(
        proxy.addr("web"),
        "GET /hop HTTP/1.1\r\n\
         Host: app.example.com:8080\r\n\
         Connection: close, x-secret\r\n\
         X-Secret: 1\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Authorization: Basic eA==\r\n\
         TE: trailers, deflate\r\n\
         Upgrade: foo\r\n\
         X-Keep: kept\r\n\
         \r\n",
    )
    .await;
    assert_eq!(r.outcome(), "a", "{}", r.text);
    let echo = r.echo();
    let headers = echo["headers"].as_object().expect("echo headers");
    for gone in ["x-secret", "keep-alive", "proxy-authorization", "upgrade"] {
        assert!(
            !headers.contains_key(gone),
            "the upstream received hop-by-hop header {gone}: {headers:?}"
        );
    }
    if let Some(connection) = headers.get("connection") {
        let text = connection.to_string().to_ascii_lowercase();
        assert!(
            !text.contains("x-secret") && !text.contains("close"),
            "the client's Connection header was forwarded: {connection}"
        );
    }
    assert_eq!(
        headers.get("te"),
        Some(&serde_json::json!(["trailers"])),
        "TE keeps only `trailers`: {headers:?}"
    );
    assert_eq!(headers.get("x-keep"), Some(&serde_json::json!(["kept"])));
    assert_eq!(
        headers.get("host"),
        Some(&serde_json::json!(["app.example.com:8080"])),
        "Host is forwarded as the client sent it"
    );
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let a = TestBackend::builder("a")
        .header("connection", "x-resp-secret")
        .header("x-resp-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("x-resp-keep", "kept")
        .start()
        .await;
    let proxy = Proxy::start(config::simple(&[&a])).await;
    for client in [http1_client(), http2_client()] {
        let r = client.get(&proxy.url("web", "/")).await;
        assert_eq!(outcome(&r), "a");
        for gone in ["x-resp-secret", "keep-alive"] {
            assert_eq!(
                r.header(gone),
                None,
                "{:?} client received hop-by-hop {gone}: {:?}",
                r.version,
                r.headers
            );
        }
        let connection = r.header_all("connection").join(",").to_ascii_lowercase();
        assert!(
            !connection.contains("x-resp-secret"),
            "{:?}: the upstream's Connection header was forwarded: {connection}",
            r.version
        );
        assert_eq!(r.header("x-resp-keep"), Some("kept"), "{:?}", r.version);
    }
}

#[tokio::test]
async fn host_is_preserved_for_http1_and_http2_clients() {
    let a = TestBackend::echo("a").await;
    let proxy = Proxy::start(config::simple(&[&a])).await;
    let addr = proxy.addr("web");
    let r = http1_client()
        .connect_to(addr)
        .get("http://Shop.Example.com:8443/p")
        .await;
    assert_eq!(r.echo().header("host"), Some("Shop.Example.com:8443"));

    let r = http2_client()
        .connect_to(addr)
        .get("http://shop.example.com:8443/p")
        .await;
    let echo = r.echo();
    let seen = echo
        .authority()
        .map(str::to_owned)
        .or_else(|| echo.header("host").map(str::to_owned));
    assert_eq!(
        seen.as_deref(),
        Some("shop.example.com:8443"),
        "an HTTP/2 :authority reaches the HTTP/1 upstream as its Host"
    );
    assert_eq!(
        echo.header_all("host").len(),
        1,
        "exactly one Host upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Filters
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn request_and_response_header_filters() {
    let a = TestBackend::builder("a")
        .header("x-resp-set", "from-backend")
        .header("x-resp-remove", "secret")
        .start()
        .await;
    let routes = r#"
- name: all
  filters:
    request_headers:
      set: [{name: x-set, value: new}, {name: x-order, value: set}]
      add: [{name: x-add, value: added}, {name: x-order, value: added}, {name: x-gone, value: added}]
      remove: [x-remove, x-gone]
    response_headers:
      set: [{name: x-resp-set, value: tern}]
      add: [{name: x-resp-add, value: one}]
      remove: [x-resp-remove]
  backends: [{name: a}]
"#;
    let proxy = Proxy::start(listener_config(routes, &format!("- {}\n", a.yaml()))).await;
    let r = http1_client()
        .send(
            "GET",
            &proxy.url("web", "/f"),
            &[
                ("x-set", "old"),
                ("x-set", "old2"),
                ("x-add", "original"),
                ("x-remove", "bye"),
                ("x-untouched", "same"),
            ],
            "",
        )
        .await;
    assert_eq!(outcome(&r), "a");
    let echo = r.echo();
    assert_eq!(
        echo.header_all("x-set"),
        ["new"],
        "set replaces every value"
    );
    assert_eq!(
        echo.header_all("x-add"),
        ["original", "added"],
        "add appends"
    );
    assert_eq!(echo.header_all("x-remove"), Vec::<&str>::new(), "remove");
    assert_eq!(
        echo.header_all("x-order"),
        ["set", "added"],
        "set, then add"
    );
    assert_eq!(
        echo.header_all("x-gone"),
        Vec::<&str>::new(),
        "remove runs after add"
    );
    assert_eq!(echo.header("x-untouched"), Some("same"));

    assert_eq!(
        r.header_all("x-resp-set"),
        ["tern"],
        "response set replaces"
    );
    assert_eq!(r.header_all("x-resp-add"), ["one"], "response add");
    assert_eq!(r.header("x-resp-remove"), None, "response remove");
}

#[tokio::test]
async fn url_rewrite_replaces_prefix_and_hostname() {
    let a = TestBackend::echo("a").await;
    let routes = r#"
- name: v1
  hostnames: [api.example.com]
  matches: [{path: {type: PathPrefix, value: /api/v1}}]
  filters:
    url_rewrite:
      hostname: internal.example.com
      path: {type: ReplacePrefixMatch, value: /}
  backends: [{name: a}]
- name: v2
  matches: [{path: {type: PathPrefix, value: /old}}]
  filters:
    url_rewrite:
      path: {type: ReplacePrefixMatch, value: /new}
  backends: [{name: a}]
- name: full
  matches: [{path: {type: PathPrefix, value: /full}}]
  filters:
    url_rewrite:
      path: {type: ReplaceFullPath, value: /fixed}
  backends: [{name: a}]
"#;
    let proxy = Proxy::start(listener_config(routes, &format!("- {}\n", a.yaml()))).await;
    let client = http1_client().connect_to(proxy.addr("web"));
    let cases = [
        ("api.example.com", "/api/v1/x", "/x"),
        ("api.example.com", "/api/v1", "/"),
        ("api.example.com", "/api/v1/", "/"),
        ("api.example.com", "/api/v1/x/y?q=1", "/x/y?q=1"),
        ("h.example", "/old", "/new"),
        ("h.example", "/old/", "/new/"),
        ("h.example", "/old/x?y=2", "/new/x?y=2"),
        ("h.example", "/full/a/b?z=3", "/fixed?z=3"),
    ];
    for (host, path, want) in cases {
        let r = client.get(&format!("http://{host}{path}")).await;
        assert_eq!(outcome(&r), "a", "GET {host}{path}");
        assert_eq!(r.echo().path(), want, "upstream path for GET {host}{path}");
    }
    let r = client.get("http://api.example.com/api/v1/x").await;
    assert_eq!(
        r.echo().header_all("host"),
        ["internal.example.com"],
        "url_rewrite.hostname is the upstream Host"
    );
    let r = client.get("http://h.example:81/old").await;
    assert_eq!(
        r.echo().header_all("host"),
        ["h.example:81"],
        "without hostname rewrite the Host is kept"
    );
}

#[tokio::test]
async fn redirect_is_answered_by_the_proxy() {
    let a = TestBackend::echo("a").await;
    let routes = r#"
- name: blog
  matches: [{path: {type: PathPrefix, value: /blog}}]
  filters:
    redirect:
      scheme: https
      hostname: blog.example.com
      path: {type: ReplacePrefixMatch, value: /new}
      status_code: 301
- name: moved
  matches: [{path: {type: PathPrefix, value: /moved}}]
  filters:
    redirect: {hostname: other.example, port: 8080}
- name: all
  backends: [{name: a}]
"#;
    let proxy = Proxy::start(listener_config(routes, &format!("- {}\n", a.yaml()))).await;
    let client = http1_client().connect_to(proxy.addr("web"));
    let cases = [
        ("/blog/x?q=1", 301, "https://blog.example.com/new/x?q=1"),
        ("/blog", 301, "https://blog.example.com/new"),
        ("/moved/p?q=2", 302, "http://other.example:8080/moved/p?q=2"),
    ];
    for (path, status, location) in cases {
        let r = client.get(&format!("http://www.example.com{path}")).await;
        assert_eq!(
            (r.status.as_u16(), r.header("location")),
            (status, Some(location)),
            "GET {path}: headers {:?}",
            r.headers
        );
        assert_eq!(r.backend(), None, "GET {path}: a redirect is not forwarded");
    }
    assert_eq!(a.requests(), 0, "no redirect reached the backend");
    let r = client.get("http://www.example.com/blogger").await;
    assert_eq!(outcome(&r), "a", "/blogger is not under /blog");
}

// ---------------------------------------------------------------------------------------------
// 9. Metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn requests_total_counts_each_request_once() {
    let a = TestBackend::echo("a").await;
    let routes = "- {name: all, hostnames: [app.example.com], backends: [{name: a}]}\n";
    let proxy = Proxy::start(listener_config(routes, &format!("- {}\n", a.yaml()))).await;
    let client = http1_client().connect_to(proxy.addr("web"));
    let n = 7;
    for i in 0..n {
        let r = client.get(&format!("http://app.example.com/{i}")).await;
        assert_eq!(outcome(&r), "a");
    }
    let r = client.get("http://nothing.example.com/").await;
    assert_proxy_error(&r, 404, "no-route", "unknown host");

    let ok = [
        ("listener", "web"),
        ("route", "all"),
        ("backend", "a"),
        ("status_class", "2xx"),
    ];
    let not_found = [("listener", "web"), ("route", ""), ("status_class", "4xx")];
    wait_for(
        "the requests in tern_requests_total",
        Duration::from_secs(5),
        async || {
            proxy.metric("tern_requests_total", &ok).await == Some(f64::from(n))
                && proxy.metric("tern_requests_total", &not_found).await == Some(1.0)
        },
    )
    .await;
    let text = proxy.metrics().await;
    assert_eq!(
        tern_e2e::metrics::find(&text, "tern_requests_total", &ok),
        Some(f64::from(n)),
        "2xx count for route all: {text}"
    );
    assert_eq!(
        tern_e2e::metrics::find(&text, "tern_requests_total", &not_found),
        Some(1.0),
        "the 404 counts under route=\"\": {text}"
    );
    assert_eq!(
        tern_e2e::metrics::find(&text, "tern_requests_total", &[("listener", "web")]),
        Some(f64::from(n) + 1.0),
        "nothing else was counted: {text}"
    );
}
