//! Semantic checks of a parsed config. Every problem is collected, each with its path in the
//! document and the reason, so one run of `tern-proxy validate` shows all of them.

use std::collections::{HashMap, HashSet};
use std::fmt;

use http::{HeaderName, HeaderValue, Method};

use super::resilience::check_percent;
use super::{
    Backend, Config, Filters, HeaderModifier, ListenerProtocol, PathMatchType, PathModifier, Route,
    ValueMatchType,
};

/// The Gateway API's upper bound for a backend weight.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// One thing wrong with a config, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the document, e.g. `listeners[0].routes[2].backends[1].name`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid YAML: {0}")]
    Parse(String),
    #[error("{} problem(s) in config:\n{}", .0.len(), ProblemList(.0))]
    Invalid(Vec<Problem>),
    #[error("cannot bind listener {name} on {address}: {source}")]
    Bind {
        name: String,
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {p}")?;
        }
        Ok(())
    }
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn report(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Reports a spec's own problems, whose paths are relative to `at`.
    fn report_all(&mut self, at: &str, problems: Vec<(String, String)>) {
        for (path, message) in problems {
            self.report(format!("{at}{path}"), message);
        }
    }
}

/// Checks everything `Config::from_yaml` cannot: references, uniqueness, ranges, regexes,
/// header names. Returns every problem found.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let mut c = Checker {
        problems: Vec::new(),
    };

    if config.workers == Some(0) {
        c.report(
            "workers",
            "must be at least 1 (omit it to use every available CPU)",
        );
    }

    let mut backend_names = HashSet::new();
    for (i, b) in config.backends.iter().enumerate() {
        let at = format!("backends[{i}]");
        check_name(&mut c, &format!("{at}.name"), &b.name);
        if !backend_names.insert(b.name.as_str()) {
            c.report(
                format!("{at}.name"),
                format!("duplicate backend name {:?}", b.name),
            );
        }
        let mut seen = HashSet::new();
        for (j, e) in b.endpoints.iter().enumerate() {
            if !seen.insert(e) {
                c.report(
                    format!("{at}.endpoints[{j}]"),
                    format!("duplicate endpoint {e}"),
                );
            }
        }
        if b.connect_timeout.is_zero() {
            c.report(format!("{at}.connect_timeout"), "must be greater than 0");
        }
        check_backend_resilience(&mut c, &at, b);
    }

    if let Some(t) = &config.tracing {
        c.report_all("tracing", t.problems());
    }

    let mut listener_names = HashSet::new();
    let mut addresses: HashMap<std::net::SocketAddr, usize> = HashMap::new();
    if config.admin.address.port() != 0 {
        addresses.insert(config.admin.address, usize::MAX);
    }
    for (i, l) in config.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        check_name(&mut c, &format!("{at}.name"), &l.name);
        if !listener_names.insert(l.name.as_str()) {
            c.report(
                format!("{at}.name"),
                format!("duplicate listener name {:?}", l.name),
            );
        }
        if l.address.port() != 0 {
            match addresses.insert(l.address, i) {
                Some(usize::MAX) => c.report(
                    format!("{at}.address"),
                    format!("{} is the admin address", l.address),
                ),
                Some(other) => c.report(
                    format!("{at}.address"),
                    format!("{} is also used by listeners[{other}]", l.address),
                ),
                None => {}
            }
        }
        if let Some(tb) = &l.tcp_backend
            && !backend_names.contains(tb.as_str())
        {
            c.report(
                format!("{at}.tcp_backend"),
                format!("unknown backend {tb:?}"),
            );
        }
        if l.protocol == ListenerProtocol::Tcp {
            if l.tcp_backend.is_none() {
                c.report(
                    format!("{at}.tcp_backend"),
                    "a tcp listener needs a tcp_backend",
                );
            }
            if !l.routes.is_empty() {
                c.report(
                    format!("{at}.routes"),
                    "a tcp listener has no HTTP routes; use protocol auto or http1/http2",
                );
            }
        }
        if let Some(rl) = &l.rate_limit
            && let Err(e) = rl.to_config()
        {
            c.report(format!("{at}.rate_limit"), e);
        }
        let h = &l.http;
        if h.max_header_bytes < 8192 || h.max_header_bytes > 1 << 20 {
            c.report(
                format!("{at}.http.max_header_bytes"),
                "must be between 8192 and 1048576",
            );
        }
        if h.max_headers == 0 {
            c.report(format!("{at}.http.max_headers"), "must be at least 1");
        }
        if h.max_concurrent_streams == 0 {
            c.report(
                format!("{at}.http.max_concurrent_streams"),
                "must be at least 1",
            );
        }
        if h.header_read_timeout.is_zero() {
            c.report(
                format!("{at}.http.header_read_timeout"),
                "must be greater than 0",
            );
        }

        c.report_all(&format!("{at}.request_id"), l.request_id.problems());
        c.report_all(&format!("{at}.tracing"), l.tracing.problems());
        if let Some(log) = &l.access_log {
            c.report_all(&format!("{at}.access_log"), log.problems());
        }

        let mut route_names = HashSet::new();
        for (j, r) in l.routes.iter().enumerate() {
            let at = format!("{at}.routes[{j}]");
            check_name(&mut c, &format!("{at}.name"), &r.name);
            if !route_names.insert(r.name.as_str()) {
                c.report(
                    format!("{at}.name"),
                    format!("duplicate route name {:?} in listener {:?}", r.name, l.name),
                );
            }
            check_route(&mut c, &at, r, &backend_names);
        }
    }

    if c.problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(c.problems))
    }
}

fn check_name(c: &mut Checker, at: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:".contains(&b));
    if !ok {
        c.report(
            at,
            format!(
                "{name:?} is not a valid name (1-253 of a-z, A-Z, 0-9, '-', '_', '.', '/', ':')"
            ),
        );
    }
}

fn check_route(c: &mut Checker, at: &str, r: &Route, backends: &HashSet<&str>) {
    for (k, h) in r.hostnames.iter().enumerate() {
        if let Err(why) = check_hostname(h) {
            c.report(format!("{at}.hostnames[{k}]"), why);
        }
    }
    let mut all_prefix = !r.matches.is_empty();
    for (k, m) in r.matches.iter().enumerate() {
        let at = format!("{at}.matches[{k}]");
        match &m.path {
            Some(p) => {
                if p.kind != PathMatchType::PathPrefix {
                    all_prefix = false;
                }
                match p.kind {
                    PathMatchType::Exact | PathMatchType::PathPrefix => {
                        if !p.value.starts_with('/') {
                            c.report(format!("{at}.path.value"), "must start with '/'");
                        } else if crate::router::normalize_path(&p.value) != p.value
                            && !(p.kind == PathMatchType::PathPrefix
                                && p.value.len() > 1
                                && p.value.ends_with('/')
                                && crate::router::normalize_path(&p.value)
                                    == p.value[..p.value.len() - 1])
                        {
                            c.report(
                                format!("{at}.path.value"),
                                format!(
                                    "{:?} is not a normalized path (requests are matched after normalization, so it could never match)",
                                    p.value
                                ),
                            );
                        }
                    }
                    PathMatchType::RegularExpression => {
                        if let Err(e) = regex::Regex::new(&p.value) {
                            c.report(format!("{at}.path.value"), regex_problem(&e));
                        }
                    }
                }
            }
            None => all_prefix = false,
        }
        if let Some(method) = &m.method
            && Method::from_bytes(method.as_bytes()).is_err()
        {
            c.report(
                format!("{at}.method"),
                format!("{method:?} is not an HTTP method"),
            );
        }
        for (n, h) in m.headers.iter().enumerate() {
            let at = format!("{at}.headers[{n}]");
            if HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                c.report(
                    format!("{at}.name"),
                    format!("{:?} is not a header name", h.name),
                );
            }
            check_value_match(c, &at, h.kind, h.value.as_deref());
        }
        for (n, q) in m.query_params.iter().enumerate() {
            let at = format!("{at}.query_params[{n}]");
            if q.name.is_empty() {
                c.report(format!("{at}.name"), "must not be empty");
            }
            check_value_match(c, &at, q.kind, q.value.as_deref());
        }
    }

    check_filters(c, &format!("{at}.filters"), &r.filters, all_prefix);

    if r.timeout.is_some_and(|t| t.is_zero()) {
        c.report(
            format!("{at}.timeout"),
            "must be greater than 0 (omit it for none)",
        );
    }
    if r.idle_timeout.is_some_and(|t| t.is_zero()) {
        c.report(
            format!("{at}.idle_timeout"),
            "must be greater than 0 (omit it for none)",
        );
    }
    if let Some(retry) = &r.retry
        && let Err(e) = retry.to_policy()
    {
        c.report(format!("{at}.retry"), e);
    }
    if let Some(rl) = &r.rate_limit
        && let Err(e) = rl.to_config()
    {
        c.report(format!("{at}.rate_limit"), e);
    }
    if let Some(f) = &r.fault {
        if let Some(d) = &f.delay {
            if let Err(e) = check_percent(d.percent) {
                c.report(format!("{at}.fault.delay.percent"), e);
            }
            if d.duration.is_zero() {
                c.report(
                    format!("{at}.fault.delay.duration"),
                    "must be greater than 0",
                );
            }
        }
        if let Some(a) = &f.abort {
            if let Err(e) = check_percent(a.percent) {
                c.report(format!("{at}.fault.abort.percent"), e);
            }
            if !(200..=599).contains(&a.status) {
                c.report(
                    format!("{at}.fault.abort.status"),
                    format!("{} is not a status between 200 and 599", a.status),
                );
            }
        }
        if f.delay.is_none() && f.abort.is_none() {
            c.report(format!("{at}.fault"), "needs a delay, an abort or both");
        }
    }
    if let Some(m) = &r.filters.request_mirror {
        if !backends.contains(m.backend.as_str()) {
            c.report(
                format!("{at}.filters.request_mirror.backend"),
                format!("unknown backend {:?}", m.backend),
            );
        }
        if let Err(e) = check_percent(m.percent) {
            c.report(format!("{at}.filters.request_mirror.percent"), e);
        }
    }
    if r.filters.redirect.is_some() {
        if !r.backends.is_empty() {
            c.report(
                format!("{at}.backends"),
                "a route with a redirect filter answers itself; it cannot also have backends",
            );
        }
    } else if r.backends.is_empty() {
        c.report(
            format!("{at}.backends"),
            "a route needs at least one backend (or a redirect filter)",
        );
    }
    let mut seen = HashSet::new();
    for (k, b) in r.backends.iter().enumerate() {
        if !backends.contains(b.name.as_str()) {
            c.report(
                format!("{at}.backends[{k}].name"),
                format!("unknown backend {:?}", b.name),
            );
        }
        if !seen.insert(b.name.as_str()) {
            c.report(
                format!("{at}.backends[{k}].name"),
                format!("backend {:?} is listed twice in this route", b.name),
            );
        }
        if b.weight > MAX_WEIGHT {
            c.report(
                format!("{at}.backends[{k}].weight"),
                format!("{} is over the maximum weight {MAX_WEIGHT}", b.weight),
            );
        }
    }
}

fn check_backend_resilience(c: &mut Checker, at: &str, b: &Backend) {
    let cb = &b.circuit_breaker;
    for (name, v) in [
        ("max_connections", cb.max_connections),
        ("max_pending", cb.max_pending),
        ("max_requests", cb.max_requests),
    ] {
        if v == 0 {
            c.report(
                format!("{at}.circuit_breaker.{name}"),
                "must be at least 1 (0 would refuse every request)",
            );
        }
    }
    if let Some(o) = &b.outlier_detection {
        if o.base_ejection_time.is_zero() {
            c.report(
                format!("{at}.outlier_detection.base_ejection_time"),
                "must be greater than 0",
            );
        }
        if o.max_ejection_time < o.base_ejection_time {
            c.report(
                format!("{at}.outlier_detection.max_ejection_time"),
                "must not be shorter than base_ejection_time",
            );
        }
        if o.max_ejection_percent > 100 {
            c.report(
                format!("{at}.outlier_detection.max_ejection_percent"),
                format!("{} is over 100", o.max_ejection_percent),
            );
        }
    }
    let lb = &b.load_balancer;
    if lb.decay.is_zero() {
        c.report(
            format!("{at}.load_balancer.decay"),
            "must be greater than 0",
        );
    }
    if let Err(e) = b.retry_budget.to_config() {
        c.report(format!("{at}.retry_budget"), e);
    }
}

/// Things that are allowed but probably not what the author meant: `tern-proxy validate`
/// prints them, a reload logs them; they never refuse a config.
pub fn warnings(config: &Config) -> Vec<Problem> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    for (i, l) in config.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        if config.tracing.is_none() && !l.tracing.is_default() {
            c.report(
                format!("{at}.tracing"),
                "has no effect without the top-level tracing block",
            );
        }
        if let Some(log) = &l.access_log {
            if log.hash_key.is_some() && !log.hashes() {
                c.report(
                    format!("{at}.access_log.hash_key"),
                    "no header is logged with redact: hash",
                );
            }
            if log.hash_key.is_none() && log.hashes() {
                c.report(
                    format!("{at}.access_log"),
                    "redact: hash without a hash_key is plain SHA-256: a reader of the log can \
                     recover low-entropy values (user ids, e-mail addresses) by guessing",
                );
            }
        }
        for (j, r) in l.routes.iter().enumerate() {
            let at = format!("listeners[{i}].routes[{j}]");
            let Some(retry) = &r.retry else { continue };
            if !retry.allow_non_idempotent {
                let only_unsafe: Vec<&str> = r
                    .matches
                    .iter()
                    .filter_map(|m| m.method.as_deref())
                    .filter(|m| {
                        Method::from_bytes(m.as_bytes())
                            .is_ok_and(|m| !crate::retry::is_idempotent(&m))
                    })
                    .collect();
                if !r.matches.is_empty() && only_unsafe.len() == r.matches.len() {
                    c.report(
                        format!("{at}.retry"),
                        format!(
                            "the route only matches {} requests, which are never retried \
                             without allow_non_idempotent: true",
                            only_unsafe.join("/")
                        ),
                    );
                }
            }
            if retry.per_try_timeout.is_some()
                && let Ok(policy) = retry.to_policy()
                && !policy.on.matches(&crate::retry::Outcome::Failed(
                    crate::retry::Failure::Timeout,
                ))
            {
                c.report(
                    format!("{at}.retry.on"),
                    "a try that hits per_try_timeout is not retried by these conditions; \
                     add reset or gateway-error to retry it",
                );
            }
            if retry.max_attempts == 1 {
                c.report(
                    format!("{at}.retry.max_attempts"),
                    "1 attempt means no retries",
                );
            }
            if let (Some(per_try), Some(total)) = (retry.per_try_timeout, r.timeout)
                && per_try >= total
            {
                c.report(
                    format!("{at}.retry.per_try_timeout"),
                    format!(
                        "{per_try:?} is not shorter than the route timeout {total:?}: \
                         no retry could ever follow a timed-out try"
                    ),
                );
            }
        }
    }
    c.problems
}

fn check_value_match(c: &mut Checker, at: &str, kind: ValueMatchType, value: Option<&str>) {
    match (kind, value) {
        (ValueMatchType::Present, Some(_)) => {
            c.report(format!("{at}.value"), "type Present takes no value")
        }
        (ValueMatchType::Present, None) => {}
        (_, None) => c.report(format!("{at}.value"), "required for this match type"),
        (ValueMatchType::RegularExpression, Some(v)) => {
            if let Err(e) = regex::Regex::new(v) {
                c.report(format!("{at}.value"), regex_problem(&e));
            }
        }
        (ValueMatchType::Exact, Some(_)) => {}
    }
}

fn check_filters(c: &mut Checker, at: &str, f: &Filters, all_prefix: bool) {
    check_modifier(c, &format!("{at}.request_headers"), &f.request_headers);
    check_modifier(c, &format!("{at}.response_headers"), &f.response_headers);
    let prefix_ok = |c: &mut Checker, path: &str, m: &PathModifier| {
        if let PathModifier::ReplacePrefixMatch(v) | PathModifier::ReplaceFullPath(v) = m
            && !v.starts_with('/')
        {
            c.report(format!("{path}.value"), "must start with '/'");
        }
        if matches!(m, PathModifier::ReplacePrefixMatch(_)) && !all_prefix {
            c.report(
                path,
                "ReplacePrefixMatch needs every match of the route to be a PathPrefix match",
            );
        }
    };
    if let Some(rw) = &f.url_rewrite {
        if let Some(h) = &rw.hostname
            && let Err(why) = check_hostname(h).and_then(|()| {
                if h.starts_with("*.") {
                    Err("a rewrite hostname cannot be a wildcard".into())
                } else {
                    Ok(())
                }
            })
        {
            c.report(format!("{at}.url_rewrite.hostname"), why);
        }
        if let Some(p) = &rw.path {
            prefix_ok(c, &format!("{at}.url_rewrite.path"), p);
        }
        if f.redirect.is_some() {
            c.report(
                format!("{at}.url_rewrite"),
                "url_rewrite and redirect cannot be used together",
            );
        }
    }
    if let Some(r) = &f.redirect {
        if !matches!(r.status_code, 301 | 302 | 303 | 307 | 308) {
            c.report(
                format!("{at}.redirect.status_code"),
                format!(
                    "{} is not a redirect status (301, 302, 303, 307, 308)",
                    r.status_code
                ),
            );
        }
        if let Some(s) = &r.scheme
            && s != "http"
            && s != "https"
        {
            c.report(
                format!("{at}.redirect.scheme"),
                format!("{s:?}: must be http or https"),
            );
        }
        if let Some(h) = &r.hostname
            && let Err(why) = check_hostname(h)
        {
            c.report(format!("{at}.redirect.hostname"), why);
        }
        if let Some(p) = &r.path {
            prefix_ok(c, &format!("{at}.redirect.path"), p);
        }
    }
}

fn check_modifier(c: &mut Checker, at: &str, m: &HeaderModifier) {
    for (kind, list) in [("set", &m.set), ("add", &m.add)] {
        for (i, h) in list.iter().enumerate() {
            if HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                c.report(
                    format!("{at}.{kind}[{i}].name"),
                    format!("{:?} is not a header name", h.name),
                );
            }
            if HeaderValue::from_str(&h.value).is_err() {
                c.report(
                    format!("{at}.{kind}[{i}].value"),
                    "not a valid header value (visible ASCII, spaces and tabs only)",
                );
            }
        }
    }
    for (i, name) in m.remove.iter().enumerate() {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            c.report(
                format!("{at}.remove[{i}]"),
                format!("{name:?} is not a header name"),
            );
        }
    }
}

/// A DNS name as Gateway API allows it in `hostnames`: lower-case labels, optionally with one
/// leading `*.` wildcard label, no port, no IP address.
fn check_hostname(h: &str) -> Result<(), String> {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    let labels_ok = !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !labels_ok {
        return Err(format!(
            "{h:?} is not a valid hostname (lower-case DNS labels, optionally starting with '*.', no port)"
        ));
    }
    if rest.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!("{h:?}: IP addresses are not allowed as hostnames"));
    }
    Ok(())
}

/// The regex crate's errors span several lines (pattern, caret, reason); keep the reason.
fn regex_problem(e: &regex::Error) -> String {
    let text = e.to_string();
    let reason = text
        .lines()
        .last()
        .unwrap_or("")
        .trim_start_matches("error: ");
    format!("invalid regex: {reason}")
}
