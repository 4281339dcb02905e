//! Request ids: keep a well-formed incoming `x-request-id`, or make a UUID v4. IO-free.
//!
//! # Model
//!
//! Every request that leaves the proxy carries exactly one request id, in a configurable header
//! (`x-request-id` by default, the de-facto name that Envoy, nginx, Heroku and most frameworks
//! use). The id names the request in the access log, upstream, and (when echoed) in the
//! response, so a user's report can be matched to every hop's log line.
//!
//! - **Kept** when the request carries exactly one value of the header and it is well formed:
//!   1 to [`MAX_LEN`] bytes of visible ASCII (`0x21..=0x7e`: no spaces, no control characters,
//!   nothing that needs escaping in a log other than `"` and `\`). 128 bytes hold every id
//!   format in common use (a UUID is 36, a ULID 26, a W3C trace id 32, a hex SHA-256 64) with
//!   room for a prefix such as `edge-`, and keep one client from putting kilobytes into every
//!   log line of every hop.
//! - **Replaced** otherwise (absent, empty, too long, odd bytes, or sent twice: two ids would
//!   make the log ambiguous), by a fresh random UUID v4. A listener facing the internet can
//!   also refuse to trust client ids at all (`keep_incoming: false`), as Envoy's edge does.
//!
//! A UUID v4 has 122 random bits. They come from `fastrand` (a per-thread wyrand generator,
//! seeded once per thread): no system call and no lock per id. It is not a cryptographic
//! generator: request ids are names, not secrets or capabilities, and nothing may rely on them
//! being unguessable. `uuid` sets the version and variant bits and formats the id, lower-case
//! and hyphenated, into a stack buffer.
//!
//! # Cost on the request path
//!
//! - An id that is kept: one header-map lookup and a scan of at most 128 bytes; the
//!   returned [`RequestId`] is a clone of the header value, which for values hyper parsed is a
//!   reference-count increment (one atomic), no allocation.
//! - A generated id: 16 random bytes, 36 bytes formatted on the stack, one allocation (the
//!   value, reference-counted from the start), one header-map insert. The map, the returned
//!   id and the echo share it: one atomic increment each.

#[cfg(test)]
mod tests;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header that carries the id unless configured otherwise.
pub const DEFAULT_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest incoming id kept, in bytes; see the module docs for why 128.
pub const MAX_LEN: usize = 128;

/// Length of a hyphenated UUID: `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`.
pub const UUID_LEN: usize = uuid::fmt::Hyphenated::LENGTH;

/// A listener's request-id policy, compiled from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIds {
    header: HeaderName,
    echo: bool,
    keep_incoming: bool,
}

impl Default for RequestIds {
    /// `x-request-id`, kept when well formed, echoed in the response.
    fn default() -> Self {
        Self {
            header: DEFAULT_HEADER,
            echo: true,
            keep_incoming: true,
        }
    }
}

/// A request's id, and whether the proxy made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    value: HeaderValue,
    generated: bool,
}

impl RequestId {
    /// The id as a header value (clone it to put it elsewhere: one atomic, see the module docs).
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }

    /// The id as text. Always visible ASCII, so never fails in practice; `""` if it did.
    pub fn as_str(&self) -> &str {
        self.value.to_str().unwrap_or("")
    }

    /// Whether this proxy generated the id (rather than keeping the client's).
    pub fn generated(&self) -> bool {
        self.generated
    }
}

impl RequestIds {
    /// A policy; `header` should not be a header the proxy itself manages (checked by config
    /// validation).
    pub fn new(header: HeaderName, echo: bool, keep_incoming: bool) -> Self {
        Self {
            header,
            echo,
            keep_incoming,
        }
    }

    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Whether responses carry the id back to the client.
    pub fn echo(&self) -> bool {
        self.echo
    }

    pub fn keep_incoming(&self) -> bool {
        self.keep_incoming
    }

    /// Makes sure the request carries exactly one well-formed id (kept or generated, see the
    /// module docs) and returns it. Uses the calling thread's `fastrand` generator.
    pub fn ensure(&self, headers: &mut HeaderMap) -> RequestId {
        self.ensure_from(headers, || fastrand::u128(..))
    }

    /// [`Self::ensure`] drawing from `rng` (tests pass a seeded one).
    pub fn ensure_with(&self, headers: &mut HeaderMap, rng: &mut fastrand::Rng) -> RequestId {
        self.ensure_from(headers, || rng.u128(..))
    }

    fn ensure_from(&self, headers: &mut HeaderMap, random: impl FnOnce() -> u128) -> RequestId {
        // One lookup for both the check and the insert (the name is hashed once).
        let value = match headers.entry(&self.header) {
            http::header::Entry::Occupied(mut present) => {
                let mut values = present.iter();
                let keep = self.keep_incoming
                    && values.next().is_some_and(|v| is_well_formed(v.as_bytes()))
                    && values.next().is_none();
                if keep {
                    // Unique per request as ours are: never indexed (see `never_indexed`).
                    let value = present.get_mut();
                    value.set_sensitive(true);
                    return RequestId {
                        value: value.clone(),
                        generated: false,
                    };
                }
                let value = uuid_v4_value(random());
                // Replaces every value that was there.
                present.insert(value.clone());
                value
            }
            http::header::Entry::Vacant(absent) => {
                let value = uuid_v4_value(random());
                absent.insert(value.clone());
                value
            }
        };
        RequestId {
            value,
            generated: true,
        }
    }

    /// Puts the id on a response if the policy says so. Replaces any value the upstream set:
    /// the client must see the id the proxies logged.
    pub fn echo_into(&self, id: &RequestId, response: &mut HeaderMap) {
        if self.echo {
            response.insert(self.header.clone(), id.value.clone());
        }
    }
}

/// Whether an incoming id may be kept: 1 to [`MAX_LEN`] bytes of visible ASCII.
pub fn is_well_formed(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// A fresh UUID v4 from the calling thread's `fastrand` generator.
pub fn generate() -> HeaderValue {
    uuid_v4_value(fastrand::u128(..))
}

/// A fresh UUID v4 from `rng`.
pub fn generate_with(rng: &mut fastrand::Rng) -> HeaderValue {
    uuid_v4_value(rng.u128(..))
}

fn uuid_v4_value(random: u128) -> HeaderValue {
    let mut buf = [0u8; UUID_LEN];
    format_uuid_v4(random.to_le_bytes(), &mut buf);
    // Shared from the start: one allocation holds the bytes and the count, and the clones
    // that follow (into the map, the id, the response) are reference-count increments.
    // Lower-case hex and hyphens: always a valid value.
    crate::http::headers::never_indexed(
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
            .unwrap_or(HeaderValue::from_static("-")),
    )
}

/// Formats 16 random bytes as a UUID v4 (version and variant bits set) into `buf`.
pub fn format_uuid_v4(random: [u8; 16], buf: &mut [u8; UUID_LEN]) -> &[u8] {
    let id = uuid::Builder::from_random_bytes(random).into_uuid();
    id.hyphenated().encode_lower(buf).as_bytes()
}
