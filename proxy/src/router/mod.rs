//! Route matching, precompiled off the request path (Gateway API HTTPRoute semantics).
//!
//! `Router::new` compiles a listener's routes once: regexes anchored and compiled, header
//! names parsed, methods parsed, and every (route, match) pair sorted into precedence order
//! per hostname, each list indexed by path segment (`index`). `Router::find` then walks, in
//! that order, only the candidates of one list that the request's path can reach, and
//! returns the first whose conditions hold: no allocation (unless the `Host` has upper-case
//! letters) and no lock.
//!
//! Precedence, across all routes and all their matches, first difference wins:
//!
//! 1. host: a route whose matching hostname is exact, then wildcard routes with the longest
//!    matching hostname first, then routes without hostnames;
//! 2. path: `Exact`, then `PathPrefix` with the most characters, then `RegularExpression`,
//!    then `PathPrefix /` (also what a match without a path is). Gateway API leaves the rank
//!    of regexes to the implementation; ours puts them below every real prefix but above the
//!    catch-all `/`, so a default route does not shadow regex routes;
//! 3. a match with a method before one without;
//! 4. more header conditions first, then more query parameter conditions first;
//! 5. declaration order: route index, then match index within the route.
//!
//! Matching details worth knowing:
//!
//! - paths are compared after `normalize_path`; `Exact` is byte equality, `PathPrefix` matches
//!   whole segments (`/api` matches `/api`, `/api/` and `/api/x`, not `/apix`), and a prefix
//!   written with a trailing slash (`/api/`) behaves as the one without;
//! - regexes (path, header, query) must match the whole value: they are compiled as
//!   `^(?:...)$`, and header values are matched as bytes so non-UTF-8 values can still match;
//! - host: case-insensitive, a `:port` suffix and one trailing dot are ignored (`[::1]:80` is
//!   the host `[::1]`); `*.example.com` matches `a.example.com` and `a.b.example.com`, not
//!   `example.com`;
//! - headers: names case-insensitive; when a header is repeated, any one value may match;
//! - query parameters: names case-sensitive; nothing is percent- or `+`-decoded; a repeated
//!   parameter is judged by its first value; a parameter without `=` is present with an
//!   empty value;
//! - as in Gateway API, when one match lists the same header (or query parameter) name twice
//!   only the first condition counts, for matching and for precedence.
//!
//! Clone the `Router` per worker thread: a cloned regex gets its own cache pool, so regex
//! matches never contend across threads.

mod index;
mod path;
#[cfg(test)]
mod tests;

pub use path::normalize_path;

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use http::{HeaderMap, HeaderName, Method};
use regex::bytes::Regex;

use self::index::CandidateList;
use crate::config::{self, PathMatchType, ValueMatchType};

/// What `Router::find` looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// `Host` / `:authority` as received: may carry a port and upper case.
    pub host: &'a str,
    pub method: &'a Method,
    /// Already normalized with `normalize_path`, without the query.
    pub path: &'a str,
    /// The raw query string without the `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The route a request matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    /// Index into the routes given to `Router::new`.
    pub route: usize,
    /// Bytes of the path a `PathPrefix` match consumed: the prefix without its trailing `/`
    /// (so 0 for `/`), and 0 for other path matches. `ReplacePrefixMatch` replaces
    /// `path[..prefix_len]`.
    pub prefix_len: usize,
}

/// A listener's compiled route table.
#[derive(Debug, Clone)]
pub struct Router {
    /// Every (route, match) pair in declaration order; the lists below index into it.
    candidates: Box<[Candidate]>,
    /// Exact hostname → the candidates of routes that match it (by that exact name or by a
    /// wildcard), in precedence order. Routes without hostnames are not repeated here.
    exact_hosts: HashMap<Box<str>, CandidateList>,
    /// Wildcard suffix (`example.com` for `*.example.com`) → the candidates of routes matching
    /// a host whose longest matching wildcard is this one, in precedence order.
    wildcard_hosts: HashMap<Box<str>, CandidateList>,
    /// Candidates of routes without hostnames, in precedence order; tried after the above.
    any_host: CandidateList,
}

impl Router {
    /// Compiles `routes` (a listener's, in declaration order). They should have passed
    /// `config::validate`; anything that still fails to compile is an error, not a panic.
    pub fn new(routes: &[config::Route]) -> Result<Router, String> {
        Self::build(routes, CandidateList::new)
    }

    /// `new`, with `list` building each host group's `CandidateList` (tests vary the index).
    fn build(
        routes: &[config::Route],
        list: fn(Box<[usize]>, &[Candidate]) -> CandidateList,
    ) -> Result<Router, String> {
        let mut candidates = Vec::new();
        let mut of_route: Vec<Range<usize>> = Vec::with_capacity(routes.len());
        for (route_index, route) in routes.iter().enumerate() {
            let start = candidates.len();
            if route.matches.is_empty() {
                candidates.push(Candidate::match_all(route_index));
            }
            for (match_index, m) in route.matches.iter().enumerate() {
                let candidate = Candidate::compile(route_index, m).map_err(|why| {
                    format!("route {:?}: matches[{match_index}]: {why}", route.name)
                })?;
                candidates.push(candidate);
            }
            of_route.push(start..candidates.len());
        }

        // Which routes name which hostnames. BTreeMaps keep the build deterministic.
        let mut by_exact: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut by_wildcard: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut any = Vec::new();
        for (route_index, route) in routes.iter().enumerate() {
            if route.hostnames.is_empty() {
                any.push(route_index);
            }
            for hostname in &route.hostnames {
                let hostname = canonical_host(hostname).into_owned();
                match hostname.strip_prefix("*.") {
                    Some(suffix) => by_wildcard.entry(suffix.to_owned()).or_default(),
                    None => by_exact.entry(hostname).or_default(),
                }
                .push(route_index);
            }
        }

        let sorted = |ranked: &BTreeMap<usize, HostRank>| -> CandidateList {
            let mut sorted: Vec<(HostRank, MatchRank, usize)> = ranked
                .iter()
                .flat_map(|(&route, &host_rank)| {
                    of_route[route].clone().map(move |i| (host_rank, i))
                })
                .map(|(host_rank, i)| (host_rank, candidates[i].rank(), i))
                .collect();
            sorted.sort_unstable();
            list(sorted.into_iter().map(|(_, _, i)| i).collect(), &candidates)
        };
        let mut ranked = BTreeMap::new();

        let mut exact_hosts = HashMap::with_capacity(by_exact.len());
        for (host, exact_routes) in &by_exact {
            ranked.clear();
            for &route in exact_routes {
                ranked.insert(route, HostRank::Exact);
            }
            rank_wildcards(&mut ranked, &by_wildcard, parent_domains(host));
            exact_hosts.insert(host.as_str().into(), sorted(&ranked));
        }

        // A host found under wildcard `suffix` matches `*.suffix` and every wildcard for a
        // parent domain of `suffix`, and no exact hostname (those were looked up first).
        let mut wildcard_hosts = HashMap::with_capacity(by_wildcard.len());
        for suffix in by_wildcard.keys() {
            ranked.clear();
            let own = std::iter::once(suffix.as_str());
            rank_wildcards(&mut ranked, &by_wildcard, own.chain(parent_domains(suffix)));
            wildcard_hosts.insert(suffix.as_str().into(), sorted(&ranked));
        }

        ranked.clear();
        ranked.extend(any.into_iter().map(|route| (route, HostRank::Any)));
        let any_host = sorted(&ranked);

        Ok(Router {
            candidates: candidates.into(),
            exact_hosts,
            wildcard_hosts,
            any_host,
        })
    }

    /// The first route (by precedence) whose hostnames and one of whose matches accept the
    /// request.
    pub fn find(&self, req: &RequestParts<'_>) -> Option<RouteMatch> {
        let accepts = |i: usize| {
            let candidate = self.candidates.get(i)?;
            candidate.accepts(req).map(|prefix_len| RouteMatch {
                route: candidate.route,
                prefix_len,
            })
        };
        self.host_candidates(req.host)
            .and_then(|list| list.find_map(req.path, accepts))
            .or_else(|| self.any_host.find_map(req.path, accepts))
    }

    /// The candidates of routes with hostnames that match `host`, in precedence order.
    fn host_candidates(&self, host: &str) -> Option<&CandidateList> {
        if self.exact_hosts.is_empty() && self.wildcard_hosts.is_empty() {
            return None;
        }
        let host = canonical_host(host);
        if let Some(list) = self.exact_hosts.get(&*host) {
            return Some(list);
        }
        // Parent domains come longest first, so the first hit is the most specific wildcard.
        parent_domains(&host).find_map(|suffix| self.wildcard_hosts.get(suffix))
    }
}

/// Records, for each route with a wildcard among `suffixes` (longest first), its best rank,
/// unless it already has a better one.
fn rank_wildcards<'a>(
    ranked: &mut BTreeMap<usize, HostRank>,
    by_wildcard: &BTreeMap<String, Vec<usize>>,
    suffixes: impl Iterator<Item = &'a str>,
) {
    for suffix in suffixes {
        let rank = HostRank::Wildcard(Reverse(suffix.len()));
        for &route in by_wildcard.get(suffix).into_iter().flatten() {
            ranked
                .entry(route)
                .and_modify(|r| *r = (*r).min(rank))
                .or_insert(rank);
        }
    }
}

/// The domains a wildcard could name for `host`, longest first: for `a.b.example.com`,
/// `b.example.com`, `example.com`, `com`. The wildcard label must be non-empty, so a leading
/// dot yields nothing for itself.
fn parent_domains(host: &str) -> impl Iterator<Item = &str> {
    host.char_indices()
        .filter(|&(i, c)| c == '.' && i > 0)
        .map(move |(i, _)| &host[i + 1..])
}

/// The host as routes name it: no port, no trailing dot, lower case. Borrows unless the host
/// has upper-case letters.
fn canonical_host(host: &str) -> Cow<'_, str> {
    let host = strip_port(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// `example.com:8080` → `example.com`, `[::1]:80` → `[::1]`. A bare IPv6 address (several
/// colons, no brackets) is left whole.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, _port)) if !name.contains(':') => name,
        _ => host,
    }
}

/// How well a route's hostnames fit the request host. Smaller is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HostRank {
    Exact,
    /// The length of the matching wildcard's suffix: longer is better.
    Wildcard(Reverse<usize>),
    Any,
}

/// How specific a match is, by the Gateway API criteria after the host. Smaller is better.
type MatchRank = (PathRank, Reverse<bool>, Reverse<usize>, Reverse<usize>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PathRank {
    Exact,
    /// A prefix other than `/`; its length without a trailing `/`, longer is better.
    Prefix(Reverse<usize>),
    Regex,
    /// `PathPrefix /`, or no path condition.
    Root,
}

/// One compiled (route, match) pair: all of its conditions must hold.
#[derive(Debug, Clone)]
struct Candidate {
    route: usize,
    path: PathCondition,
    method: Option<Method>,
    headers: Box<[HeaderCondition]>,
    query: Box<[QueryCondition]>,
}

#[derive(Debug, Clone)]
enum PathCondition {
    Exact(Box<str>),
    /// Without a trailing `/`, so `/` is the empty prefix.
    Prefix(Box<str>),
    Regex(Regex),
}

#[derive(Debug, Clone)]
struct HeaderCondition {
    name: HeaderName,
    value: ValueCondition,
}

#[derive(Debug, Clone)]
struct QueryCondition {
    name: Box<str>,
    value: ValueCondition,
}

#[derive(Debug, Clone)]
enum ValueCondition {
    Exact(Box<[u8]>),
    Regex(Regex),
    Present,
}

impl Candidate {
    /// A route without matches: one match that accepts everything (`PathPrefix /`).
    fn match_all(route: usize) -> Self {
        Candidate {
            route,
            path: PathCondition::Prefix("".into()),
            method: None,
            headers: Box::new([]),
            query: Box::new([]),
        }
    }

    fn compile(route: usize, m: &config::RouteMatch) -> Result<Self, String> {
        let path = match &m.path {
            None => PathCondition::Prefix("".into()),
            Some(p) => match p.kind {
                PathMatchType::Exact => PathCondition::Exact(p.value.as_str().into()),
                PathMatchType::PathPrefix => {
                    PathCondition::Prefix(p.value.strip_suffix('/').unwrap_or(&p.value).into())
                }
                PathMatchType::RegularExpression => PathCondition::Regex(
                    full_match_regex(&p.value).map_err(|e| format!("path.value: {e}"))?,
                ),
            },
        };
        let method = match &m.method {
            None => None,
            Some(s) => Some(
                Method::from_bytes(s.as_bytes())
                    .map_err(|_| format!("method: {s:?} is not an HTTP method"))?,
            ),
        };

        let mut headers: Vec<HeaderCondition> = Vec::with_capacity(m.headers.len());
        for (k, h) in m.headers.iter().enumerate() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("headers[{k}].name: {:?} is not a header name", h.name))?;
            let value = ValueCondition::compile(h.kind, h.value.as_deref())
                .map_err(|e| format!("headers[{k}].value: {e}"))?;
            // Gateway API: only the first condition on a given name counts.
            if headers.iter().all(|c| c.name != name) {
                headers.push(HeaderCondition { name, value });
            }
        }

        let mut query: Vec<QueryCondition> = Vec::with_capacity(m.query_params.len());
        for (k, q) in m.query_params.iter().enumerate() {
            let value = ValueCondition::compile(q.kind, q.value.as_deref())
                .map_err(|e| format!("query_params[{k}].value: {e}"))?;
            if query.iter().all(|c| *c.name != *q.name) {
                query.push(QueryCondition {
                    name: q.name.as_str().into(),
                    value,
                });
            }
        }

        Ok(Candidate {
            route,
            path,
            method,
            headers: headers.into(),
            query: query.into(),
        })
    }

    fn rank(&self) -> MatchRank {
        let path = match &self.path {
            PathCondition::Exact(_) => PathRank::Exact,
            PathCondition::Prefix(p) if p.is_empty() => PathRank::Root,
            PathCondition::Prefix(p) => PathRank::Prefix(Reverse(p.len())),
            PathCondition::Regex(_) => PathRank::Regex,
        };
        (
            path,
            Reverse(self.method.is_some()),
            Reverse(self.headers.len()),
            Reverse(self.query.len()),
        )
    }

    /// `Some(prefix_len)` when every condition holds. Cheap conditions first; the query
    /// string is only scanned when this candidate has query conditions.
    fn accepts(&self, req: &RequestParts<'_>) -> Option<usize> {
        let prefix_len = self.path.accepts(req.path)?;
        let ok = self.method.as_ref().is_none_or(|m| m == req.method)
            && self.headers.iter().all(|h| h.accepts(req.headers))
            && self.query.iter().all(|q| q.accepts(req.query));
        ok.then_some(prefix_len)
    }
}

impl HeaderCondition {
    /// Any one value of a repeated header may match.
    fn accepts(&self, headers: &HeaderMap) -> bool {
        match &self.value {
            ValueCondition::Present => headers.contains_key(&self.name),
            value => headers
                .get_all(&self.name)
                .iter()
                .any(|v| value.accepts(v.as_bytes())),
        }
    }
}

impl QueryCondition {
    fn accepts(&self, query: Option<&str>) -> bool {
        query
            .and_then(|query| query_param(query, &self.name))
            .is_some_and(|v| self.value.accepts(v.as_bytes()))
    }
}

impl PathCondition {
    /// `Some(prefix_len)` when `path` matches.
    fn accepts(&self, path: &str) -> Option<usize> {
        match self {
            PathCondition::Exact(want) => (path == &**want).then_some(0),
            PathCondition::Prefix(prefix) => {
                let rest = path.strip_prefix(&**prefix)?;
                (prefix.is_empty() || rest.is_empty() || rest.starts_with('/'))
                    .then_some(prefix.len())
            }
            PathCondition::Regex(re) => re.is_match(path.as_bytes()).then_some(0),
        }
    }
}

impl ValueCondition {
    fn compile(kind: ValueMatchType, value: Option<&str>) -> Result<Self, String> {
        match (kind, value) {
            (ValueMatchType::Present, _) => Ok(ValueCondition::Present),
            (ValueMatchType::Exact, Some(v)) => Ok(ValueCondition::Exact(v.as_bytes().into())),
            (ValueMatchType::RegularExpression, Some(v)) => {
                full_match_regex(v).map(ValueCondition::Regex)
            }
            (_, None) => Err("a value is required for this match type".into()),
        }
    }

    fn accepts(&self, value: &[u8]) -> bool {
        match self {
            ValueCondition::Exact(want) => value == &**want,
            ValueCondition::Regex(re) => re.is_match(value),
            ValueCondition::Present => true,
        }
    }
}

/// The first value of query parameter `name` in a raw query string (`a=1&b&a=2`: `a` is `1`,
/// `b` is present and empty). Nothing is decoded.
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Compiles `pattern` so it must match a whole value: `^(?:pattern)$`.
fn full_match_regex(pattern: &str) -> Result<Regex, String> {
    // Checked alone first, so a broken pattern is reported as itself, and so that the only
    // way the anchored form can still fail is a verbose-mode (`(?x)`) comment running to the
    // end and swallowing the closing `)$`; a newline ends the comment and is whitespace there.
    Regex::new(pattern).map_err(|e| format!("invalid regex: {e}"))?;
    Regex::new(&format!("^(?:{pattern})$"))
        .or_else(|_| Regex::new(&format!("^(?:{pattern}\n)$")))
        .map_err(|e| format!("invalid regex: {e}"))
}
