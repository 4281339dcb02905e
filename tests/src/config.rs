//! Turning a test's config text into the file the proxy reads: ports for `127.0.0.1:0`, an
//! admin address when the test gave none, and the same ports again across reloads.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;

use crate::backend::TestBackend;

/// What a test writes where the proxy should listen on "some free port". The proxy cannot
/// bind port 0 itself yet, so the harness replaces each occurrence with a free port before
/// the proxy sees the file; the tests read the result back with `Proxy::addr(listener)`.
pub const ANY_PORT: &str = "127.0.0.1:0";

/// Where the proxy listens, as read from the config the harness wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    /// `None` only when the config could not be parsed (a test of a broken config).
    pub admin: Option<SocketAddr>,
    /// Listener name → address.
    pub listeners: BTreeMap<String, SocketAddr>,
}

/// A config ready to write, with what was decided about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub text: String,
    pub addresses: Addresses,
}

/// Replaces every [`ANY_PORT`] in `template` with a port from `next_port`, and adds an
/// `admin` block on a fresh port when the template has none (so no test uses the default
/// port 9901 and collides with another). With `previous` (a reload), a listener that keeps
/// its name keeps its port, and so does the admin endpoint: a reload moves nothing unless
/// the test wrote an explicit new address.
///
/// The text is otherwise left as the test wrote it, so the proxy's errors point at the
/// test's own lines (shifted by two when an admin block was added). Text that is not YAML
/// is returned unchanged, with no addresses, for tests of broken configs.
pub fn resolve(
    template: &str,
    previous: Option<&Addresses>,
    mut next_port: impl FnMut() -> u16,
) -> Resolved {
    let mut generated = Vec::new();
    let mut text = replace_addr(template, ANY_PORT, || {
        let addr = SocketAddr::from(([127, 0, 0, 1], next_port()));
        generated.push(addr);
        addr.to_string()
    });

    let Ok(doc) = serde_saphyr::from_str::<Value>(&text) else {
        return Resolved {
            text,
            addresses: Addresses::default(),
        };
    };

    let mut addresses = Addresses::default();
    match doc.get("admin") {
        None => {
            let admin = previous
                .and_then(|p| p.admin)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], next_port())));
            text = insert_admin(&text, admin);
            addresses.admin = Some(admin);
        }
        Some(admin) => {
            addresses.admin = match admin.get("address") {
                Some(address) => address.as_str().and_then(|a| a.parse().ok()),
                // The proxy's default, which the test chose by leaving it out.
                None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
            };
        }
    }
    if let Some(listeners) = doc.get("listeners").and_then(Value::as_array) {
        for listener in listeners {
            let name = listener.get("name").and_then(Value::as_str);
            let address = listener
                .get("address")
                .and_then(Value::as_str)
                .and_then(|a| a.parse::<SocketAddr>().ok());
            if let (Some(name), Some(address)) = (name, address) {
                addresses.listeners.insert(name.to_owned(), address);
            }
        }
    }

    if let Some(previous) = previous {
        let mut keep = |current: &mut SocketAddr, old: SocketAddr| {
            if generated.contains(current) && *current != old {
                text = replace_addr(&text, &current.to_string(), || old.to_string());
                *current = old;
            }
        };
        if let (Some(current), Some(old)) = (addresses.admin.as_mut(), previous.admin) {
            keep(current, old);
        }
        for (name, current) in addresses.listeners.iter_mut() {
            if let Some(old) = previous.listeners.get(name) {
                keep(current, *old);
            }
        }
    }

    Resolved { text, addresses }
}

/// Replaces each `from` in `text` that is not followed by a digit (so `127.0.0.1:0` does
/// not match inside `127.0.0.1:0800`), taking each replacement from `to`.
fn replace_addr(text: &str, from: &str, mut to: impl FnMut() -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let after = &rest[at + from.len()..];
        out.push_str(&rest[..at]);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(from);
        } else {
            out.push_str(&to());
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Adds a top-level `admin` block: first in the document, after a leading `---` if any.
fn insert_admin(text: &str, admin: SocketAddr) -> String {
    let block = format!("admin:\n  address: {admin}\n");
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('%') {
            offset += line.len();
            continue;
        }
        if trimmed == "---" {
            offset += line.len();
            let separator = if line.ends_with('\n') { "" } else { "\n" };
            return format!("{}{separator}{block}{}", &text[..offset], &text[offset..]);
        }
        break;
    }
    format!("{block}{text}")
}

/// The config most tests start from: listener `web` (protocol `auto`) on a free port, one
/// route `all` sending every request to `backends` with the given weights.
pub fn split(backends: &[(&TestBackend, u32)]) -> String {
    let mut routes = String::new();
    let mut entries = String::new();
    for (backend, weight) in backends {
        routes.push_str(&format!(
            "          - {{name: \"{}\", weight: {weight}}}\n",
            backend.name()
        ));
        entries.push_str(&format!("  - {}\n", backend.yaml()));
    }
    format!(
        "listeners:\n  - name: web\n    address: {ANY_PORT}\n    routes:\n      - name: all\n        backends:\n{routes}backends:\n{entries}"
    )
}

/// [`split`] with equal weights.
pub fn simple(backends: &[&TestBackend]) -> String {
    let weighted: Vec<(&TestBackend, u32)> = backends.iter().map(|b| (*b, 1)).collect();
    split(&weighted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(start: u16) -> impl FnMut() -> u16 {
        let mut next = start;
        move || {
            next += 1;
            next
        }
    }

    const TWO_LISTENERS: &str = "\
listeners:
  - name: web
    address: 127.0.0.1:0
  - name: grpc
    address: 127.0.0.1:0
    protocol: http2
backends: []
";

    #[test]
    fn fills_ports_and_adds_admin() {
        let r = resolve(TWO_LISTENERS, None, ports(40000));
        assert_eq!(r.addresses.listeners["web"].port(), 40001);
        assert_eq!(r.addresses.listeners["grpc"].port(), 40002);
        assert_eq!(r.addresses.admin.map(|a| a.port()), Some(40003));
        assert!(
            r.text
                .starts_with("admin:\n  address: 127.0.0.1:40003\nlisteners:\n")
        );
        assert!(!r.text.contains("127.0.0.1:0\n"));
    }

    #[test]
    fn keeps_ports_across_reloads() {
        let first = resolve(TWO_LISTENERS, None, ports(40000));
        let reload = "\
admin:
  address: 127.0.0.1:0
listeners:
  - name: grpc
    address: 127.0.0.1:0
  - name: new
    address: 127.0.0.1:0
";
        let second = resolve(reload, Some(&first.addresses), ports(50000));
        assert_eq!(second.addresses.admin, first.addresses.admin);
        assert_eq!(
            second.addresses.listeners["grpc"],
            first.addresses.listeners["grpc"]
        );
        assert_eq!(second.addresses.listeners["new"].port(), 50003);
        assert!(!second.addresses.listeners.contains_key("web"));
        assert!(second.text.contains("address: 127.0.0.1:40002\n"));
        assert!(second.text.contains("address: 127.0.0.1:40003\n"));
    }

    #[test]
    fn leaves_explicit_addresses_and_longer_ports_alone() {
        let text = "admin:\n  address: 127.0.0.1:0800\nlisteners:\n  - name: a\n    address: 127.0.0.1:7000\n";
        let r = resolve(text, None, ports(40000));
        assert_eq!(r.text, text);
        assert_eq!(
            r.addresses.admin,
            Some("127.0.0.1:800".parse().expect("addr"))
        );
        assert_eq!(r.addresses.listeners["a"].port(), 7000);
    }

    #[test]
    fn admin_goes_after_a_document_marker() {
        let r = resolve("# comment\n---\nlisteners: []\n", None, ports(40000));
        assert_eq!(
            r.text,
            "# comment\n---\nadmin:\n  address: 127.0.0.1:40001\nlisteners: []\n"
        );
    }

    #[test]
    fn broken_yaml_passes_through() {
        let text = "listeners: [\n";
        let r = resolve(text, None, ports(40000));
        assert_eq!(r.text, text);
        assert_eq!(r.addresses, Addresses::default());
    }
}
