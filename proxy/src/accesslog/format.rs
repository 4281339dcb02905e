//! One record as one JSON line, appended to a reused buffer.
//!
//! Hand-written rather than through `serde_json`: the field set is fixed, and this way a line
//! costs no allocation (numbers and times are formatted straight into the buffer). Strings are
//! escaped per RFC 8259; header values may hold bytes above 0x7e (obs-text), which are not
//! UTF-8 text, so they are written as `\u00XX` (their Latin-1 reading), keeping every line
//! valid JSON whatever a client sends.

use std::io::Write;
use std::time::Duration;

use super::redact::MAX_DIGEST_LEN;
use super::{AccessRecord, Captured, LoggedHeader, Redact};

/// `,"name":` as one literal: one copy per key.
macro_rules! key {
    ($out:expr, $name:literal) => {
        $out.extend_from_slice(concat!(",\"", $name, "\":").as_bytes())
    };
}

/// Room for a typical line, reserved once so the appends below do not each grow the buffer.
const TYPICAL_LINE: usize = 768;

/// Appends `record` as one line of JSON, newline included.
pub fn write_json(record: &AccessRecord, out: &mut Vec<u8>) {
    let f = &*record.format;
    out.reserve(TYPICAL_LINE);
    out.extend_from_slice(b"{\"start_time\":\"");
    start_time(out, record.start);
    out.extend_from_slice(b"\",\"duration_ms\":");
    millis(out, record.duration);
    out.extend_from_slice(b",\"upstream_ms\":");
    match record.upstream {
        Some(d) => millis(out, d),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(&f.listener_field);
    key!(out, "request_id");
    opt_string(
        out,
        record.request_id.as_ref().map(|id| id.as_str().as_bytes()),
    );
    // Hex digits need no escaping.
    key!(out, "trace_id");
    match &record.trace_id {
        Some(t) => quoted(out, &t.to_hex()),
        None => out.extend_from_slice(b"null"),
    }
    key!(out, "span_id");
    match &record.span_id {
        Some(s) => quoted(out, &s.to_hex()),
        None => out.extend_from_slice(b"null"),
    }
    key!(out, "client");
    opt_addr(out, record.client);
    key!(out, "method");
    string(out, record.method.as_str().as_bytes());
    key!(out, "authority");
    opt_string(out, record.authority.as_ref().map(|a| a.as_bytes()));
    key!(out, "path");
    opt_string(
        out,
        record.path.as_ref().map(|p| {
            if f.include_query {
                p.as_str().as_bytes()
            } else {
                p.path().as_bytes()
            }
        }),
    );
    key!(out, "protocol");
    match crate::trace::protocol_version(record.version) {
        Some(v) => {
            out.extend_from_slice(b"\"HTTP/");
            out.extend_from_slice(v.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    key!(out, "status");
    match record.status {
        Some(s) => int(out, u64::from(s.as_u16())),
        None => out.extend_from_slice(b"null"),
    }
    key!(out, "flags");
    out.push(b'"');
    if record.flags.is_empty() {
        out.push(b'-');
    }
    for (i, code) in record.flags.codes().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(code.as_bytes());
    }
    out.push(b'"');
    out.extend_from_slice(b",\"bytes_in\":");
    int(out, record.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    int(out, record.bytes_out);
    key!(out, "route");
    opt_string(out, record.route.as_deref().map(str::as_bytes));
    key!(out, "backend");
    opt_string(out, record.backend.as_deref().map(str::as_bytes));
    key!(out, "endpoint");
    opt_addr(out, record.endpoint);
    out.extend_from_slice(b",\"attempts\":");
    int(out, u64::from(record.attempts));
    if !f.request_headers.is_empty() {
        key!(out, "request_headers");
        headers(out, &f.request_headers, &record.request_headers, &f.hasher);
    }
    if !f.response_headers.is_empty() {
        key!(out, "response_headers");
        headers(
            out,
            &f.response_headers,
            &record.response_headers,
            &f.hasher,
        );
    }
    out.extend_from_slice(b"}\n");
}

/// Milliseconds with microsecond precision, e.g. `12.345`, from integers (no float rounding).
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    int(out, micros / 1000);
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Integers without `core::fmt` (a tenth of its cost per number).
fn int(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn opt_addr(out: &mut Vec<u8>, addr: Option<std::net::SocketAddr>) {
    match addr {
        // Digits, dots, colons and brackets: nothing to escape.
        Some(a) => crate::addrtext::append_quoted(out, a),
        None => out.extend_from_slice(b"null"),
    }
}

thread_local! {
    /// The last whole second formatted, and its `YYYY-MM-DDTHH:MM:SS` text: lines of one
    /// second share it (the writer formats them on one thread).
    static SECOND: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((u64::MAX, Vec::new())) };
}

/// RFC 3339 UTC with milliseconds, the date and time formatted once per second.
fn start_time(out: &mut Vec<u8>, t: std::time::SystemTime) {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != secs {
            let whole = std::time::UNIX_EPOCH + Duration::from_secs(secs);
            let mut text = Vec::with_capacity(24);
            let _ = write!(text, "{}", humantime::format_rfc3339_seconds(whole));
            // `...:SSZ`: keep the part before the `Z`.
            text.pop();
            *cell = (secs, text);
        }
        out.extend_from_slice(&cell.1);
    });
    let ms = since.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

fn headers(out: &mut Vec<u8>, specs: &[LoggedHeader], values: &Captured, hasher: &super::Hasher) {
    out.push(b'{');
    for (i, spec) in specs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, spec.name.as_str().as_bytes());
        out.push(b':');
        match (values.get(i), spec.redact) {
            (None, _) => out.extend_from_slice(b"null"),
            (Some(v), Redact::None) => string(out, v.as_bytes()),
            (Some(v), Redact::Hash) => {
                let mut buf = [0; MAX_DIGEST_LEN];
                string(out, hasher.digest(v.as_bytes(), &mut buf));
            }
            (Some(_), Redact::Drop) => out.extend_from_slice(b"\"redacted\""),
        }
    }
    out.push(b'}');
}

/// A string known to need no escaping (hex digits).
fn quoted(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(bytes);
    out.push(b'"');
}

fn opt_string(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string of `bytes`: printable ASCII as is, `"` and `\` escaped, everything else
/// (control characters, DEL, bytes above 0x7e) as `\u00XX`.
/// Bytes a JSON string may hold as they are: printable ASCII but `"` and `\\`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// Whether every byte is [`PLAIN`]: eight at a time (bit tricks on a `u64`: any byte below
/// 0x20, above 0x7e, or equal to `"` or `\\`), the tail by the table.
pub(super) fn plain(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = ONES * 0x80;
    /// High bit set in each byte of `x` that is zero (exact as a whole: some byte is zero).
    const fn zero_bytes(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x
    }
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            return false;
        };
        let x = u64::from_le_bytes(word);
        let control = x.wrapping_sub(ONES * 0x20) & !x;
        let high = x.wrapping_add(ONES) | x;
        let quote = zero_bytes(x ^ (ONES * u64::from(b'"')));
        let backslash = zero_bytes(x ^ (ONES * u64::from(b'\\')));
        if (control | high | quote | backslash) & HIGHS != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| PLAIN[usize::from(b)])
}

pub(super) fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    // The common case: nothing to escape, one copy.
    if plain(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if PLAIN[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}
