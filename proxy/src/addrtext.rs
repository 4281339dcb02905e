//! Socket addresses as text without `core::fmt` (IPv4 from a table of octets): the access
//! log writes two per line, spans one.

use std::io::Write as _;
use std::net::{SocketAddr, SocketAddrV4};

/// `ip:port` formatted on the stack; IPv4 (the usual case) without `core::fmt`: each octet
/// from a table, the port through itoa (an access-log line has two addresses).
pub(crate) struct AddrText {
    // The longest socket address, `[v6%scope]:port`, is 58 bytes.
    buf: [u8; 64],
}

/// Every octet's decimal text, padded to three bytes, with its length in the fourth.
const OCTETS: [[u8; 4]; 256] = {
    let mut table = [[0u8; 4]; 256];
    let mut i = 0;
    while i < 256 {
        let (h, t, o) = ((i / 100) as u8, (i / 10 % 10) as u8, (i % 10) as u8);
        table[i] = if i >= 100 {
            [b'0' + h, b'0' + t, b'0' + o, 3]
        } else if i >= 10 {
            [b'0' + t, b'0' + o, 0, 2]
        } else {
            [b'0' + o, 0, 0, 1]
        };
        i += 1;
    }
    table
};

impl AddrText {
    pub(crate) fn new() -> Self {
        Self { buf: [0; 64] }
    }

    /// The text as UTF-8 (it is ASCII by construction).
    pub(crate) fn format(&mut self, addr: SocketAddr) -> &str {
        std::str::from_utf8(self.format_bytes(addr)).unwrap_or_default()
    }

    /// The text's bytes: for writers that take bytes (the access log), no UTF-8 check.
    pub(crate) fn format_bytes(&mut self, addr: SocketAddr) -> &[u8] {
        let len = match addr {
            SocketAddr::V4(a) => write_v4(&mut self.buf, 0, a),
            SocketAddr::V6(_) => {
                let mut rest = &mut self.buf[..];
                if write!(rest, "{addr}").is_ok() {
                    64 - rest.len()
                } else {
                    0
                }
            }
        };
        self.buf.get(..len).unwrap_or_default()
    }
}

/// Writes `a` as `ip:port` into `buf` from `at` and returns where it ends: each octet's digits
/// from the table (four bytes written at once, the cursor moved past the digits and the
/// separator only), the port through itoa. Needs 24 bytes after `at` (21 of text, and the last
/// octet's slack); with less, what does not fit is left out rather than a panic.
fn write_v4(buf: &mut [u8], mut at: usize, a: SocketAddrV4) -> usize {
    for (octet, sep) in a.ip().octets().into_iter().zip(*b"...:") {
        let [d0, d1, d2, n] = OCTETS[usize::from(octet)];
        let n = usize::from(n);
        if let Some(dst) = buf.get_mut(at..at + 4) {
            dst.copy_from_slice(&[d0, d1, d2, 0]);
            dst[n] = sep;
            at += n + 1;
        }
    }
    let mut port = itoa::Buffer::new();
    let port = port.format(a.port()).as_bytes();
    if let Some(dst) = buf.get_mut(at..at + port.len()) {
        dst.copy_from_slice(port);
        at += port.len();
    }
    at
}

/// Appends `"ip:port"` (quotes included) to `out`: an IPv4 address is built in one stack buffer
/// and copied once, the access log's two addresses per line being its only callers.
pub(crate) fn append_quoted(out: &mut Vec<u8>, addr: SocketAddr) {
    let SocketAddr::V4(a) = addr else {
        out.push(b'"');
        out.extend_from_slice(AddrText::new().format_bytes(addr));
        out.push(b'"');
        return;
    };
    // The opening quote, at most 21 bytes of text, the write's slack, the closing quote.
    let mut buf = [0u8; 28];
    buf[0] = b'"';
    let end = write_v4(&mut buf, 1, a);
    if let Some(q) = buf.get_mut(end) {
        *q = b'"';
    }
    out.extend_from_slice(buf.get(..end + 1).unwrap_or_default());
}
