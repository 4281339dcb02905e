use std::borrow::Cow;

use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::config::{
    self, HeaderMatch, PathMatch, PathMatchType, QueryParamMatch, Route, ValueMatchType,
};

// ---- building routes ----

fn route(name: &str, hostnames: &[&str], matches: Vec<config::RouteMatch>) -> Route {
    Route {
        name: name.into(),
        hostnames: hostnames.iter().map(|h| (*h).into()).collect(),
        matches,
        filters: Default::default(),
        timeout: None,
        idle_timeout: None,
        retry: None,
        rate_limit: None,
        fault: None,
        backends: vec![],
    }
}

fn any() -> config::RouteMatch {
    config::RouteMatch::default()
}

fn path(kind: PathMatchType, value: &str) -> config::RouteMatch {
    config::RouteMatch {
        path: Some(PathMatch {
            kind,
            value: value.into(),
        }),
        ..any()
    }
}

fn exact(value: &str) -> config::RouteMatch {
    path(PathMatchType::Exact, value)
}

fn prefix(value: &str) -> config::RouteMatch {
    path(PathMatchType::PathPrefix, value)
}

fn regex(value: &str) -> config::RouteMatch {
    path(PathMatchType::RegularExpression, value)
}

fn method(mut m: config::RouteMatch, method: &str) -> config::RouteMatch {
    m.method = Some(method.into());
    m
}

fn header(
    mut m: config::RouteMatch,
    name: &str,
    kind: ValueMatchType,
    value: Option<&str>,
) -> config::RouteMatch {
    m.headers.push(HeaderMatch {
        name: name.into(),
        kind,
        value: value.map(Into::into),
    });
    m
}

fn query(
    mut m: config::RouteMatch,
    name: &str,
    kind: ValueMatchType,
    value: Option<&str>,
) -> config::RouteMatch {
    m.query_params.push(QueryParamMatch {
        name: name.into(),
        kind,
        value: value.map(Into::into),
    });
    m
}

use ValueMatchType::{Exact as Is, Present, RegularExpression as Re};

// ---- building requests ----

struct Req {
    host: &'static str,
    method: Method,
    path: &'static str,
    query: Option<&'static str>,
    headers: HeaderMap,
}

fn req(path: &'static str) -> Req {
    Req {
        host: "example.com",
        method: Method::GET,
        path,
        query: None,
        headers: HeaderMap::new(),
    }
}

impl Req {
    fn host(mut self, host: &'static str) -> Self {
        self.host = host;
        self
    }
    fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }
    fn query(mut self, query: &'static str) -> Self {
        self.query = Some(query);
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.append(name, HeaderValue::from_static(value));
        self
    }
    fn find(&self, router: &Router) -> Option<RouteMatch> {
        self.with(|r| router.find(r))
    }
    fn with<T>(&self, f: impl FnOnce(&RequestParts<'_>) -> T) -> T {
        f(&RequestParts {
            host: self.host,
            method: &self.method,
            path: self.path,
            query: self.query,
            headers: &self.headers,
        })
    }
}

// ---- the path index's references ----

/// The router with every candidate list indexed, however short.
fn indexed(routes: &[Route]) -> Router {
    Router::build(routes, |order, candidates| {
        CandidateList::with_min_pinned(order, candidates, 1)
    })
    .unwrap()
}

/// What `Router::find` must return: the first candidate that accepts, walking the host's
/// whole list and then the whole any-host list.
fn find_linear(router: &Router, req: &RequestParts<'_>) -> Option<RouteMatch> {
    let specific = router
        .host_candidates(req.host)
        .map_or(&[][..], |l| l.all());
    specific
        .iter()
        .chain(router.any_host.all())
        .map(|&i| &router.candidates[i])
        .find_map(|c| {
            c.accepts(req).map(|prefix_len| RouteMatch {
                route: c.route,
                prefix_len,
            })
        })
}

/// The name of the route `req` lands on, or `None`. Also checks that indexing every list,
/// however short, and walking every list whole, give the same answer.
fn winner(routes: &[Route], req: &Req) -> Option<String> {
    let router = Router::new(routes).unwrap();
    let found = req.find(&router);
    assert_eq!(found, req.find(&indexed(routes)), "indexed");
    assert_eq!(found, req.with(|r| find_linear(&router, r)), "linear");
    found.map(|m| routes[m.route].name.clone())
}

/// Asserts that `req` lands on `a` whichever of `a` and `b` is declared first.
fn beats(a: Route, b: Route, req: &Req) {
    let want = Some(a.name.clone());
    let first = [a.clone(), b.clone()];
    assert_eq!(winner(&first, req), want, "{} declared first", a.name);
    let second = [b, a];
    assert_eq!(
        winner(&second, req),
        want,
        "{} declared second",
        second[1].name
    );
}

fn matches(routes: &[Route], req: &Req) -> bool {
    winner(routes, req).is_some()
}

// ---- hosts ----

#[test]
fn exact_hostname() {
    let routes = [route("r", &["api.example.com"], vec![])];
    assert!(matches(&routes, &req("/").host("api.example.com")));
    assert!(!matches(&routes, &req("/").host("example.com")));
    assert!(!matches(&routes, &req("/").host("x.api.example.com")));
    assert!(!matches(&routes, &req("/").host("api.example.co")));
    assert!(!matches(&routes, &req("/").host("")));
}

#[test]
fn hostname_case_port_and_trailing_dot_are_ignored() {
    let routes = [route("r", &["api.example.com"], vec![])];
    for host in [
        "API.Example.COM",
        "api.example.com:8080",
        "Api.Example.Com:443",
        "api.example.com.",
        "API.EXAMPLE.COM.:80",
    ] {
        assert!(matches(&routes, &req("/").host(host)), "{host}");
    }
    assert!(!matches(&routes, &req("/").host("api.example.com..")));
}

#[test]
fn wildcard_hostname_matches_one_or_more_labels_not_the_apex() {
    let routes = [route("r", &["*.example.com"], vec![])];
    assert!(matches(&routes, &req("/").host("a.example.com")));
    assert!(matches(&routes, &req("/").host("a.b.example.com")));
    assert!(matches(&routes, &req("/").host("A.B.Example.Com:80")));
    assert!(!matches(&routes, &req("/").host("example.com")));
    assert!(!matches(&routes, &req("/").host(".example.com")));
    assert!(!matches(&routes, &req("/").host("aexample.com")));
    assert!(!matches(&routes, &req("/").host("a.example.co")));
    assert!(!matches(&routes, &req("/").host("example.com.evil.net")));
}

#[test]
fn route_without_hostnames_matches_any_host() {
    let routes = [route("r", &[], vec![])];
    for host in ["", "a", "example.com", "[::1]:80", "10.0.0.1:8080", "::1"] {
        assert!(matches(&routes, &req("/").host(host)), "{host:?}");
    }
}

#[test]
fn ipv6_hosts_keep_their_colons() {
    assert_eq!(strip_port("[::1]:80"), "[::1]");
    assert_eq!(strip_port("[::1]"), "[::1]");
    assert_eq!(strip_port("[fe80::1%25eth0]:8080"), "[fe80::1%25eth0]");
    assert_eq!(strip_port("::1"), "::1");
    assert_eq!(strip_port("example.com:80"), "example.com");
    assert_eq!(strip_port("example.com"), "example.com");
    assert_eq!(strip_port("10.0.0.1:80"), "10.0.0.1");
    // An IPv6 literal is never a route hostname, so it only reaches routes without any.
    let routes = [
        route("named", &["example.com"], vec![]),
        route("any", &[], vec![]),
    ];
    assert_eq!(
        winner(&routes, &req("/").host("[::1]:80")).as_deref(),
        Some("any")
    );
}

#[test]
fn lower_case_hosts_are_not_copied() {
    assert!(matches!(
        canonical_host("api.example.com:80"),
        Cow::Borrowed("api.example.com")
    ));
    assert!(matches!(canonical_host("[::1]:80"), Cow::Borrowed("[::1]")));
    assert!(
        matches!(canonical_host("Api.example.com"), Cow::Owned(ref h) if h == "api.example.com")
    );
}

#[test]
fn route_with_several_hostnames_matches_any_of_them() {
    let routes = [route("r", &["a.example.com", "*.b.example.com"], vec![])];
    assert!(matches(&routes, &req("/").host("a.example.com")));
    assert!(matches(&routes, &req("/").host("x.b.example.com")));
    assert!(!matches(&routes, &req("/").host("b.example.com")));
    assert!(!matches(&routes, &req("/").host("c.example.com")));
}

// ---- paths ----

#[test]
fn prefix_matches_whole_segments() {
    let routes = [route("r", &[], vec![prefix("/api")])];
    for p in ["/api", "/api/", "/api/x", "/api/x/y"] {
        assert!(matches(&routes, &req(p)), "{p}");
    }
    for p in ["/apix", "/ap", "/", "/x/api", "/API"] {
        assert!(!matches(&routes, &req(p)), "{p}");
    }
}

#[test]
fn prefix_with_trailing_slash_behaves_as_without() {
    let routes = [route("r", &[], vec![prefix("/api/")])];
    for p in ["/api", "/api/", "/api/x"] {
        assert!(matches(&routes, &req(p)), "{p}");
    }
    assert!(!matches(&routes, &req("/apix")));
}

#[test]
fn root_prefix_and_no_path_match_everything() {
    for routes in [
        [route("r", &[], vec![prefix("/")])],
        [route("r", &[], vec![any()])],
        [route("r", &[], vec![])],
    ] {
        for p in ["/", "/a", "/a/b/", "/.well-known/x"] {
            assert!(matches(&routes, &req(p)), "{p}");
        }
    }
}

#[test]
fn exact_path_is_byte_equal() {
    let routes = [route("r", &[], vec![exact("/api")])];
    assert!(matches(&routes, &req("/api")));
    for p in ["/api/", "/api/x", "/ap", "/API", "/"] {
        assert!(!matches(&routes, &req(p)), "{p}");
    }
}

#[test]
fn path_regex_must_match_the_whole_path() {
    let routes = [route("r", &[], vec![regex("/users/[0-9]+")])];
    assert!(matches(&routes, &req("/users/42")));
    for p in ["/users/42/x", "/x/users/42", "/users/", "/users/4a"] {
        assert!(!matches(&routes, &req(p)), "{p}");
    }
    // Anchoring wraps the whole alternation, not its ends.
    let routes = [route("r", &[], vec![regex("/a|/b")])];
    assert!(matches(&routes, &req("/a")));
    assert!(matches(&routes, &req("/b")));
    assert!(!matches(&routes, &req("/a/b")));
    assert!(!matches(&routes, &req("/ab")));
    // A leftmost-first alternation still matches the whole path when some branch does.
    let routes = [route("r", &[], vec![regex("/a|/ab")])];
    assert!(matches(&routes, &req("/ab")));
    // Already-anchored patterns keep working.
    let routes = [route("r", &[], vec![regex("^/v[12]/.*$")])];
    assert!(matches(&routes, &req("/v2/x")));
    assert!(!matches(&routes, &req("/v3/x")));
}

#[test]
fn regex_flags_and_verbose_comments_survive_anchoring() {
    let routes = [route("r", &[], vec![regex("(?i)/API/.*")])];
    assert!(matches(&routes, &req("/api/x")));
    // In verbose mode a trailing comment would swallow the closing `)$`.
    let routes = [route("r", &[], vec![regex("(?x) /v [0-9]+  # a version")])];
    assert!(matches(&routes, &req("/v12")));
    assert!(!matches(&routes, &req("/v12/x")));
    let routes = [route(
        "r",
        &[],
        vec![regex("(?x)/v[0-9]+ # version\n (/.*)?")],
    )];
    assert!(matches(&routes, &req("/v1/x")));
}

// ---- methods, headers, query parameters ----

#[test]
fn method_is_exact() {
    let routes = [route("r", &[], vec![method(any(), "POST")])];
    assert!(matches(&routes, &req("/").method(Method::POST)));
    assert!(!matches(&routes, &req("/").method(Method::GET)));
    let lower = Method::from_bytes(b"post").unwrap();
    assert!(!matches(&routes, &req("/").method(lower)));
    let routes = [route("r", &[], vec![method(any(), "PURGE")])];
    assert!(matches(
        &routes,
        &req("/").method(Method::from_bytes(b"PURGE").unwrap())
    ));
}

#[test]
fn header_exact_value_is_byte_equal_and_name_case_insensitive() {
    let routes = [route(
        "r",
        &[],
        vec![header(any(), "X-Env", Is, Some("Canary"))],
    )];
    assert!(matches(&routes, &req("/").header("x-env", "Canary")));
    assert!(!matches(&routes, &req("/").header("x-env", "canary")));
    assert!(!matches(&routes, &req("/").header("x-env", "Canary ")));
    assert!(!matches(&routes, &req("/").header("x-other", "Canary")));
    assert!(!matches(&routes, &req("/")));
}

#[test]
fn header_regex_is_anchored() {
    let routes = [route(
        "r",
        &[],
        vec![header(any(), "x-version", Re, Some("v[0-9]+"))],
    )];
    assert!(matches(&routes, &req("/").header("x-version", "v12")));
    assert!(!matches(&routes, &req("/").header("x-version", "v12-beta")));
    assert!(!matches(&routes, &req("/").header("x-version", "xv12")));
    assert!(!matches(&routes, &req("/")));
}

#[test]
fn header_present() {
    let routes = [route(
        "r",
        &[],
        vec![header(any(), "authorization", Present, None)],
    )];
    assert!(matches(&routes, &req("/").header("authorization", "")));
    assert!(matches(
        &routes,
        &req("/").header("authorization", "Bearer x")
    ));
    assert!(!matches(&routes, &req("/").header("x-authorization", "x")));
}

#[test]
fn repeated_header_matches_when_any_value_does() {
    let routes = [route("r", &[], vec![header(any(), "x-tag", Is, Some("b"))])];
    let r = req("/")
        .header("x-tag", "a")
        .header("x-tag", "b")
        .header("x-tag", "c");
    assert!(matches(&routes, &r));
    let routes = [route(
        "r",
        &[],
        vec![header(any(), "x-tag", Re, Some("[0-9]+"))],
    )];
    assert!(matches(
        &routes,
        &req("/").header("x-tag", "a").header("x-tag", "7")
    ));
    assert!(!matches(
        &routes,
        &req("/").header("x-tag", "a").header("x-tag", "b")
    ));
}

#[test]
fn header_regex_sees_non_utf8_bytes() {
    let routes = [route(
        "r",
        &[],
        vec![header(any(), "x-raw", Re, Some("(?s-u:.)+"))],
    )];
    let mut r = req("/");
    r.headers
        .insert("x-raw", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
    assert!(matches(&routes, &r));
}

#[test]
fn all_conditions_of_one_match_must_hold() {
    let m = header(method(prefix("/api"), "GET"), "x-a", Is, Some("1"));
    let m = query(m, "q", Is, Some("1"));
    let routes = [route("r", &[], vec![m])];
    let full = || req("/api/x").header("x-a", "1").query("q=1");
    assert!(matches(&routes, &full()));
    assert!(!matches(&routes, &full().method(Method::POST)));
    assert!(!matches(&routes, &req("/api/x").query("q=1")));
    assert!(!matches(&routes, &req("/api/x").header("x-a", "1")));
    let mut other_path = full();
    other_path.path = "/other";
    assert!(!matches(&routes, &other_path));
}

#[test]
fn any_match_of_a_route_is_enough() {
    let routes = [route(
        "r",
        &[],
        vec![exact("/a"), method(prefix("/b"), "POST")],
    )];
    assert!(matches(&routes, &req("/a")));
    assert!(matches(&routes, &req("/b/x").method(Method::POST)));
    assert!(!matches(&routes, &req("/b/x")));
    assert!(!matches(&routes, &req("/c")));
}

#[test]
fn query_exact_regex_present() {
    let routes = [route("r", &[], vec![query(any(), "v", Is, Some("2"))])];
    assert!(matches(&routes, &req("/").query("v=2")));
    assert!(matches(&routes, &req("/").query("a=1&v=2&b")));
    assert!(!matches(&routes, &req("/").query("v=22")));
    assert!(!matches(&routes, &req("/").query("V=2")));
    assert!(!matches(&routes, &req("/").query("xv=2")));
    assert!(!matches(&routes, &req("/")));
    assert!(!matches(&routes, &req("/").query("")));

    let routes = [route(
        "r",
        &[],
        vec![query(any(), "id", Re, Some("[0-9]+"))],
    )];
    assert!(matches(&routes, &req("/").query("id=123")));
    assert!(!matches(&routes, &req("/").query("id=123x")));
    assert!(!matches(&routes, &req("/").query("id=")));

    let routes = [route("r", &[], vec![query(any(), "debug", Present, None)])];
    assert!(matches(&routes, &req("/").query("debug")));
    assert!(matches(&routes, &req("/").query("debug=")));
    assert!(matches(&routes, &req("/").query("x=1&&debug=0")));
    assert!(!matches(&routes, &req("/").query("debugging=1")));
    assert!(!matches(&routes, &req("/").query("x=debug")));
}

#[test]
fn repeated_query_param_uses_the_first_value() {
    let routes = [route("r", &[], vec![query(any(), "v", Is, Some("1"))])];
    assert!(matches(&routes, &req("/").query("v=1&v=2")));
    assert!(!matches(&routes, &req("/").query("v=2&v=1")));
}

#[test]
fn query_values_are_not_decoded() {
    let routes = [route("r", &[], vec![query(any(), "q", Is, Some("a b"))])];
    assert!(!matches(&routes, &req("/").query("q=a%20b")));
    assert!(!matches(&routes, &req("/").query("q=a+b")));
    let routes = [route("r", &[], vec![query(any(), "q", Is, Some("a%20b"))])];
    assert!(matches(&routes, &req("/").query("q=a%20b")));
    assert_eq!(query_param("a=1=2&b", "a"), Some("1=2"));
    assert_eq!(query_param("a=1=2&b", "b"), Some(""));
    assert_eq!(query_param("a=1=2&b", "c"), None);
}

#[test]
fn duplicate_condition_names_only_count_the_first() {
    // Gateway API: the second condition on `x-a` is ignored, for matching and for rank.
    let m = header(header(any(), "x-a", Is, Some("1")), "X-A", Is, Some("2"));
    let routes = [route("r", &[], vec![m.clone()])];
    assert!(matches(&routes, &req("/").header("x-a", "1")));
    let two = header(header(any(), "x-a", Is, Some("1")), "x-b", Present, None);
    beats(
        route("two", &[], vec![two]),
        route("dup", &[], vec![m]),
        &req("/").header("x-a", "1").header("x-b", ""),
    );

    let q = query(query(any(), "v", Is, Some("1")), "v", Is, Some("2"));
    let routes = [route("r", &[], vec![q])];
    assert!(matches(&routes, &req("/").query("v=1")));
}

// ---- precedence ----

#[test]
fn exact_path_beats_prefix() {
    beats(
        route("exact", &[], vec![exact("/api/v1")]),
        route("prefix", &[], vec![prefix("/api/v1")]),
        &req("/api/v1"),
    );
    beats(
        route("exact", &[], vec![exact("/api/v1/")]),
        route("prefix", &[], vec![prefix("/api/v1")]),
        &req("/api/v1/"),
    );
    // Path outranks everything after it: an Exact path beats a prefix with a method and
    // headers.
    beats(
        route("exact", &[], vec![exact("/a")]),
        route(
            "prefix",
            &[],
            vec![header(method(prefix("/a"), "GET"), "x", Present, None)],
        ),
        &req("/a").header("x", "1"),
    );
}

#[test]
fn longer_prefix_beats_shorter() {
    beats(
        route("long", &[], vec![prefix("/api/v1")]),
        route("short", &[], vec![prefix("/api")]),
        &req("/api/v1/users"),
    );
    beats(
        route("short", &[], vec![prefix("/api")]),
        route("root", &[], vec![prefix("/")]),
        &req("/api/v1/users"),
    );
    // Length is counted without a trailing slash: `/api/` ties with `/api`, and the first
    // declared wins.
    let routes = [
        route("slash", &[], vec![prefix("/api/")]),
        route("plain", &[], vec![prefix("/api")]),
    ];
    assert_eq!(winner(&routes, &req("/api/x")).as_deref(), Some("slash"));
    let routes = [routes[1].clone(), routes[0].clone()];
    assert_eq!(winner(&routes, &req("/api/x")).as_deref(), Some("plain"));
    // A longer prefix beats a shorter one that has a method.
    beats(
        route("long", &[], vec![prefix("/api/v1")]),
        route("short", &[], vec![method(prefix("/api"), "GET")]),
        &req("/api/v1"),
    );
}

#[test]
fn regex_ranks_below_prefixes_and_above_the_root() {
    beats(
        route("prefix", &[], vec![prefix("/u")]),
        route("regex", &[], vec![regex("/u/[0-9]+")]),
        &req("/u/1"),
    );
    beats(
        route("regex", &[], vec![regex("/u/[0-9]+")]),
        route("root", &[], vec![prefix("/")]),
        &req("/u/1"),
    );
    beats(
        route("regex", &[], vec![regex("/u/[0-9]+")]),
        route("default", &[], vec![]),
        &req("/u/1"),
    );
    beats(
        route("regex", &[], vec![regex("/u/[0-9]+")]),
        route("root-with-method", &[], vec![method(any(), "GET")]),
        &req("/u/1"),
    );
}

#[test]
fn method_beats_no_method() {
    beats(
        route("get", &[], vec![method(prefix("/api"), "GET")]),
        route("any", &[], vec![prefix("/api")]),
        &req("/api"),
    );
    // Method outranks headers.
    beats(
        route("get", &[], vec![method(any(), "GET")]),
        route(
            "headers",
            &[],
            vec![header(
                header(any(), "a", Present, None),
                "b",
                Present,
                None,
            )],
        ),
        &req("/").header("a", "1").header("b", "1"),
    );
}

#[test]
fn more_headers_beat_fewer() {
    let one = header(any(), "a", Present, None);
    let two = header(one.clone(), "b", Present, None);
    beats(
        route("two", &[], vec![two.clone()]),
        route("one", &[], vec![one.clone()]),
        &req("/").header("a", "1").header("b", "1"),
    );
    beats(
        route("one", &[], vec![one]),
        route("none", &[], vec![any()]),
        &req("/").header("a", "1"),
    );
    // Headers outrank query parameters.
    let q2 = query(query(any(), "x", Present, None), "y", Present, None);
    beats(
        route("header", &[], vec![header(any(), "a", Present, None)]),
        route("queries", &[], vec![q2]),
        &req("/").header("a", "1").query("x&y"),
    );
    // The winner must still match: with `b` missing, `one` wins.
    let one = header(any(), "a", Present, None);
    beats(
        route("one", &[], vec![one]),
        route("two", &[], vec![two]),
        &req("/").header("a", "1"),
    );
}

#[test]
fn query_beats_none() {
    beats(
        route("query", &[], vec![query(any(), "v", Is, Some("2"))]),
        route("none", &[], vec![any()]),
        &req("/").query("v=2"),
    );
    beats(
        route(
            "two",
            &[],
            vec![query(query(any(), "v", Present, None), "w", Present, None)],
        ),
        route("one", &[], vec![query(any(), "v", Present, None)]),
        &req("/").query("v&w"),
    );
}

#[test]
fn declaration_order_breaks_ties() {
    let a = route("a", &[], vec![prefix("/api")]);
    let b = route("b", &[], vec![prefix("/api")]);
    assert_eq!(
        winner(&[a.clone(), b.clone()], &req("/api")).as_deref(),
        Some("a")
    );
    assert_eq!(winner(&[b, a], &req("/api")).as_deref(), Some("b"));
    // Two regexes tie whatever their lengths.
    let a = route("a", &[], vec![regex("/.*")]);
    let b = route("b", &[], vec![regex("/[a-z]+/[0-9]+")]);
    assert_eq!(
        winner(&[a.clone(), b.clone()], &req("/x/1")).as_deref(),
        Some("a")
    );
    assert_eq!(winner(&[b, a], &req("/x/1")).as_deref(), Some("b"));
}

#[test]
fn precedence_is_across_matches_not_per_route() {
    // The earlier route's second match is a plain prefix; the later route's Exact beats it.
    let routes = [
        route("first", &[], vec![exact("/nope"), prefix("/a")]),
        route("second", &[], vec![exact("/a/b")]),
    ];
    assert_eq!(winner(&routes, &req("/a/b")).as_deref(), Some("second"));
    assert_eq!(winner(&routes, &req("/a/c")).as_deref(), Some("first"));
    // Within one route, the better match wins too (reported as the same route).
    let routes = [route("r", &[], vec![prefix("/"), exact("/a")])];
    assert_eq!(winner(&routes, &req("/a")).as_deref(), Some("r"));
}

#[test]
fn exact_host_beats_wildcard_beats_any_host() {
    let r = req("/api").host("api.example.com");
    beats(
        route("exact", &["api.example.com"], vec![]),
        route("wildcard", &["*.example.com"], vec![]),
        &r,
    );
    beats(
        route("wildcard", &["*.example.com"], vec![]),
        route("any", &[], vec![]),
        &r,
    );
    // Host outranks the path: a catch-all route with an Exact path still loses.
    beats(
        route("exact", &["api.example.com"], vec![]),
        route("any", &[], vec![exact("/api")]),
        &r,
    );
    beats(
        route("wildcard", &["*.example.com"], vec![prefix("/")]),
        route("any", &[], vec![exact("/api")]),
        &r,
    );
    beats(
        route("exact", &["api.example.com"], vec![prefix("/")]),
        route("wildcard", &["*.example.com"], vec![exact("/api")]),
        &r,
    );
}

#[test]
fn longer_wildcard_beats_shorter() {
    let r = req("/").host("a.b.example.com");
    beats(
        route("long", &["*.b.example.com"], vec![]),
        route("short", &["*.example.com"], vec![]),
        &r,
    );
    beats(
        route("short", &["*.example.com"], vec![]),
        route("tld", &["*.com"], vec![]),
        &r,
    );
    // The shorter wildcard still serves hosts the longer one does not match.
    let routes = [
        route("long", &["*.b.example.com"], vec![]),
        route("short", &["*.example.com"], vec![]),
    ];
    assert_eq!(
        winner(&routes, &req("/").host("b.example.com")).as_deref(),
        Some("short")
    );
    assert_eq!(
        winner(&routes, &req("/").host("c.example.com")).as_deref(),
        Some("short")
    );
}

#[test]
fn exact_hosts_also_see_wildcard_routes() {
    // `api.example.com` has an exact route, but only for `/admin`; other paths fall
    // through to the wildcard route, then to the catch-all.
    let routes = [
        route("any", &[], vec![]),
        route("wildcard", &["*.example.com"], vec![prefix("/api")]),
        route("exact", &["api.example.com"], vec![prefix("/admin")]),
    ];
    let at = |p| winner(&routes, &req(p).host("api.example.com"));
    assert_eq!(at("/admin").as_deref(), Some("exact"));
    assert_eq!(at("/api/x").as_deref(), Some("wildcard"));
    assert_eq!(at("/other").as_deref(), Some("any"));
    assert_eq!(
        winner(&routes, &req("/admin").host("www.example.com")).as_deref(),
        Some("any")
    );
}

#[test]
fn a_route_takes_the_rank_of_its_best_matching_hostname() {
    let r = req("/").host("api.example.com");
    beats(
        route("both", &["*.example.com", "api.example.com"], vec![]),
        route("wildcard", &["*.example.com"], vec![]),
        &r,
    );
    // Against another exact route it ties, so declaration order decides.
    let routes = [
        route("exact", &["api.example.com"], vec![]),
        route("both", &["*.example.com", "api.example.com"], vec![]),
    ];
    assert_eq!(winner(&routes, &r).as_deref(), Some("exact"));
    // Nested wildcards on one route: the longer one counts.
    beats(
        route("nested", &["*.com", "*.b.example.com"], vec![]),
        route("mid", &["*.example.com"], vec![]),
        &req("/").host("a.b.example.com"),
    );
}

#[test]
fn no_route_matches() {
    assert_eq!(req("/").find(&Router::new(&[]).unwrap()), None);
    let routes = [
        route("a", &["a.example.com"], vec![]),
        route("b", &[], vec![exact("/b")]),
    ];
    assert_eq!(winner(&routes, &req("/c").host("b.example.com")), None);
}

// ---- results ----

#[test]
fn route_index_and_prefix_len() {
    let routes = [
        route("exact", &[], vec![exact("/e")]),
        route("slash", &[], vec![prefix("/api/")]),
        route("plain", &[], vec![prefix("/v1")]),
        route("regex", &[], vec![regex("/r/.*")]),
        route("multi", &[], vec![exact("/nope"), prefix("/m/n")]),
        route("root", &[], vec![prefix("/")]),
    ];
    let router = Router::new(&routes).unwrap();
    let at = |p| req(p).find(&router);
    let m = |route, prefix_len| Some(RouteMatch { route, prefix_len });
    assert_eq!(at("/e"), m(0, 0));
    assert_eq!(at("/api/x"), m(1, 4));
    assert_eq!(at("/api"), m(1, 4));
    assert_eq!(at("/v1/"), m(2, 3));
    assert_eq!(at("/r/x"), m(3, 0));
    assert_eq!(at("/m/n/o"), m(4, 4));
    assert_eq!(at("/other"), m(5, 0));
    let default = Router::new(&[route("default", &[], vec![])]).unwrap();
    assert_eq!(req("/x").find(&default), m(0, 0));
}

#[test]
fn prefix_len_composes_with_normalized_paths() {
    let routes = [route("r", &[], vec![prefix("/api")])];
    let router = Router::new(&routes).unwrap();
    let normalized = normalize_path("//x/../api/%2e/v1");
    let r = RequestParts {
        host: "h",
        method: &Method::GET,
        path: &normalized,
        query: None,
        headers: &HeaderMap::new(),
    };
    let found = router.find(&r).unwrap();
    assert_eq!(&normalized[found.prefix_len..], "/v1");
}

// ---- the path index ----

/// How many candidates of `router` a lookup of `path` on host `h` visits.
fn visited(router: &Router, path: &str) -> usize {
    let mut count = 0;
    let mut visit = |_| {
        count += 1;
        None::<()>
    };
    if let Some(list) = router.host_candidates("h") {
        list.find_map(path, &mut visit);
    }
    router.any_host.find_map(path, &mut visit);
    count
}

#[test]
fn lookup_visits_only_candidates_its_path_can_reach() {
    let mut routes: Vec<Route> = (0..100)
        .map(|i| {
            route(
                &format!("svc{i}"),
                &["h"],
                vec![prefix(&format!("/svc{i}/api"))],
            )
        })
        .collect();
    routes.extend(
        (0..100).map(|i| route(&format!("v{i}"), &[], vec![prefix(&format!("/api/v{i}"))])),
    );
    routes.push(route("exact", &["h"], vec![exact("/svc7/api/")]));
    routes.push(route("regex", &["h"], vec![regex("/svc7/.*")]));
    routes.push(route("default", &[], vec![]));
    let router = Router::new(&routes).unwrap();
    // Every lookup visits the regex (the host's root) and the default (the any-host root),
    // plus what is pinned on its way down: `/svc7/api`, `exact` for the trailing slash,
    // `/api/v42`. Never the other 99 services or 100 versions.
    assert_eq!(visited(&router, "/svc7/api/x"), 3);
    assert_eq!(visited(&router, "/svc7/api/"), 4);
    assert_eq!(visited(&router, "/api/v42/users"), 3);
    assert_eq!(visited(&router, "/api/v4200"), 2);
    assert_eq!(visited(&router, "/nothing"), 2);
    // Not normalized, so nothing pinned can match it: only the regex and the default.
    assert_eq!(visited(&router, "svc7/api"), 2);
}

#[test]
fn index_respects_segment_rules_and_odd_values() {
    let routes = [
        route("exact-slash", &[], vec![exact("/api/")]),
        route("prefix", &[], vec![prefix("/api")]),
        route("prefix-slash", &[], vec![prefix("/v1/")]),
        route("double-slash", &[], vec![prefix("/x//")]),
        route("root-exact", &[], vec![exact("/")]),
        route("empty-segment", &[], vec![prefix("//")]),
        route("relative", &[], vec![exact("rel/x")]),
        route("relative-prefix", &[], vec![prefix("rel")]),
        route("deep", &[], vec![prefix("/a/b/c/d/e/f/g/h/i/j")]),
        route("deep-exact", &[], vec![exact("/a/b/c/d/e/f/g/h/i/j/k")]),
        route("apix", &[], vec![exact("/apix")]),
    ];
    let cases = [
        ("/api/", Some("exact-slash")),
        ("/api", Some("prefix")),
        ("/api/x", Some("prefix")),
        ("/apix", Some("apix")),
        ("/apix/", None),
        ("/v1", Some("prefix-slash")),
        ("/v1/", Some("prefix-slash")),
        ("/v1x", None),
        ("/x/", Some("double-slash")),
        ("/x//y", Some("double-slash")),
        ("/x", None),
        ("/", Some("root-exact")),
        ("//y", Some("empty-segment")),
        ("rel/x", Some("relative")),
        ("rel", Some("relative-prefix")),
        ("rel/y", Some("relative-prefix")),
        ("/a/b/c/d/e/f/g/h/i/j/k", Some("deep-exact")),
        ("/a/b/c/d/e/f/g/h/i/j/k/l", Some("deep")),
        ("/a/b/c/d/e/f/g/h/i/jj", None),
        ("/a/b/c/d/e/f/g/h", None),
    ];
    for (path, want) in cases {
        assert_eq!(
            winner(&routes, &req(path)),
            want.map(String::from),
            "{path:?}"
        );
    }
}

/// Random route tables and requests: the indexed lookup (with the usual threshold and with
/// every list indexed) returns exactly what a walk of the whole lists does.
#[test]
fn indexed_lookup_agrees_with_the_linear_walk() {
    const REGEXES: &[&str] = &["/api/.*", "/.*", "/v1", ".*x.*", "/a(pi)?/v1/?", "/[^/]*"];
    const ROUTE_HOSTS: &[&str] = &[
        "a.example.com",
        "*.example.com",
        "*.b.example.com",
        "b.example.com",
        "other.org",
    ];
    const REQUEST_HOSTS: &[&str] = &[
        "a.example.com",
        "c.example.com",
        "c.b.example.com",
        "b.example.com",
        "other.org",
        "none.net",
        "A.Example.com:8080",
    ];

    let mut compared = 0;
    for seed in 0..200 {
        let mut rng = fastrand::Rng::with_seed(seed);
        // Path values the routes use, so that requests often come near them.
        let mut values = Vec::new();
        let routes: Vec<Route> = (0..rng.usize(1..=40))
            .map(|i| {
                let hostnames: Vec<&str> = (0..rng.usize(..=2))
                    .map(|_| pick(&mut rng, ROUTE_HOSTS))
                    .collect();
                // Now and then a route without matches: it matches everything.
                let count = if rng.u8(..20) == 0 {
                    0
                } else {
                    rng.usize(1..=3)
                };
                let matches = (0..count)
                    .map(|_| {
                        let mut m = match rng.u8(..20) {
                            0 => any(),
                            1..=5 => exact(&random_path(&mut rng)),
                            6 | 7 => regex(pick(&mut rng, REGEXES)),
                            _ => prefix(&random_path(&mut rng)),
                        };
                        if let Some(p) = &m.path {
                            values.push(p.value.clone());
                        }
                        if rng.bool() {
                            m = method(m, pick(&mut rng, &["GET", "POST"]));
                        }
                        for _ in 0..rng.usize(..=2) {
                            let name = pick(&mut rng, &["x-a", "x-b"]);
                            m = match rng.u8(..3) {
                                0 => header(m, name, Present, None),
                                _ => header(m, name, Is, Some(pick(&mut rng, &["1", "2"]))),
                            };
                        }
                        if rng.u8(..4) == 0 {
                            m = query(m, "q", Is, Some("1"));
                        }
                        m
                    })
                    .collect();
                route(&format!("r{i}"), &hostnames, matches)
            })
            .collect();
        let usual = Router::new(&routes).unwrap();
        let all_indexed = indexed(&routes);

        for _ in 0..150 {
            let path = match values.get(rng.usize(..values.len().max(1) * 2)) {
                Some(value) => near(&mut rng, value),
                None => random_path(&mut rng),
            };
            let mut headers = HeaderMap::new();
            for name in ["x-a", "x-b"] {
                if rng.bool() {
                    let value = pick(&mut rng, &["1", "2"]);
                    headers.insert(name, HeaderValue::from_static(value));
                }
            }
            let method = if rng.bool() {
                Method::GET
            } else {
                Method::POST
            };
            let r = RequestParts {
                host: pick(&mut rng, REQUEST_HOSTS),
                method: &method,
                path: &path,
                query: rng.bool().then_some("q=1"),
                headers: &headers,
            };
            let want = find_linear(&usual, &r);
            assert_eq!(usual.find(&r), want, "seed {seed}: {r:?}\n{routes:#?}");
            assert_eq!(
                all_indexed.find(&r),
                want,
                "seed {seed}: {r:?}\n{routes:#?}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 200 * 150);
}

fn pick(rng: &mut fastrand::Rng, from: &[&'static str]) -> &'static str {
    from[rng.usize(..from.len())]
}

/// A path of a few segments, now and then one deeper than the index goes, with a trailing
/// slash or without the leading one.
fn random_path(rng: &mut fastrand::Rng) -> String {
    const SEGMENTS: &[&str] = &["api", "v1", "x", "users", "a", "apix", ""];
    let segments = if rng.u8(..10) == 0 {
        rng.usize(..=12)
    } else {
        rng.usize(1..=3)
    };
    let mut path = String::new();
    for _ in 0..segments {
        // The empty segment (`//`) one time in four.
        let from = if rng.u8(..4) == 0 {
            SEGMENTS
        } else {
            &SEGMENTS[..SEGMENTS.len() - 1]
        };
        path.push('/');
        path.push_str(pick(rng, from));
    }
    match rng.u8(..10) {
        0 => path.trim_start_matches('/').to_owned(),
        1 | 2 => path + "/",
        _ if path.is_empty() => "/".into(),
        _ => path,
    }
}

/// `value`, or a path next to it: one segment more or less, a trailing slash, a longer last
/// segment.
fn near(rng: &mut fastrand::Rng, value: &str) -> String {
    match rng.u8(..6) {
        0 => format!("{value}/{}", random_path(rng).trim_start_matches('/')),
        1 => format!("{value}/"),
        2 => value
            .rsplit_once('/')
            .map_or("/", |(head, _)| head)
            .to_owned(),
        3 => format!("{value}x"),
        _ => value.to_owned(),
    }
}

// ---- errors ----

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let err = |m| Router::new(&[route("bad", &[], vec![m])]).unwrap_err();
    let e = err(regex("/(unclosed"));
    assert!(
        e.contains("\"bad\"") && e.contains("matches[0]") && e.contains("regex"),
        "{e}"
    );
    assert!(err(header(any(), "x", Re, Some("["))).contains("headers[0]"));
    assert!(err(query(any(), "x", Re, Some("a)"))).contains("query_params[0]"));
    assert!(err(header(any(), "bad name", Is, Some("x"))).contains("header name"));
    assert!(err(method(any(), "GE T")).contains("method"));
    assert!(err(header(any(), "x", Is, None)).contains("value"));
    // A pattern that ends in a backslash is broken on its own; anchoring must not "fix" it.
    assert!(err(regex("/a\\")).contains("regex"));
}

#[test]
fn router_is_send_sync_and_clone() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Router>();
}
