//! Redaction of logged header values.
//!
//! `hash` replaces a value with a digest, so operators can correlate lines (the same user id
//! gives the same digest on every hop and every day) without reading the value. It is
//! HMAC-SHA-256 keyed with the access log's `hash_key` when one is set: without the key, a log
//! reader cannot test guesses. Without a key it is plain SHA-256, which anyone can recompute
//! for a guessed value: fine for high-entropy values (session tokens), not for low-entropy
//! ones (user ids, e-mail addresses), which should get a key. The digest is cut to its first
//! 16 bytes (128 bits: collisions are not a practical concern for correlation) and written as
//! `sha256:<32 hex>` or `hmac-sha256:<32 hex>`.
//!
//! `drop` logs only that the header was present (`"redacted"`), never the value.

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

/// How a logged header's value is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Redact {
    /// As it is.
    #[default]
    None,
    /// A stable digest (see the module docs).
    Hash,
    /// Only whether it was present.
    Drop,
}

/// Bytes of digest kept.
const DIGEST_BYTES: usize = 16;

/// The longest digest text: `hmac-sha256:` and 32 hex digits.
pub const MAX_DIGEST_LEN: usize = 12 + 2 * DIGEST_BYTES;

/// Computes the digests of `hash` redaction; keyed or not.
#[derive(Clone)]
pub struct Hasher {
    /// The HMAC state after absorbing the key, cloned per value (no re-keying per line).
    keyed: Option<hmac::Hmac<Sha256>>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Hasher")
            .field("keyed", &self.keyed.is_some())
            .finish()
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::unkeyed()
    }
}

impl Hasher {
    pub fn unkeyed() -> Self {
        Self { keyed: None }
    }

    /// HMAC-SHA-256 with `key` (any length is accepted; HMAC hashes long keys).
    pub fn keyed(key: &[u8]) -> Self {
        Self {
            keyed: hmac::Hmac::<Sha256>::new_from_slice(key).ok(),
        }
    }

    /// The digest text of `value`, written into `buf`.
    pub fn digest<'a>(&self, value: &[u8], buf: &'a mut [u8; MAX_DIGEST_LEN]) -> &'a [u8] {
        let (prefix, full): (&[u8], [u8; 32]) = match &self.keyed {
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(value);
                (b"hmac-sha256:", mac.finalize().into_bytes().into())
            }
            None => (b"sha256:", Sha256::digest(value).into()),
        };
        buf[..prefix.len()].copy_from_slice(prefix);
        let end = prefix.len() + 2 * DIGEST_BYTES;
        crate::trace::hex::encode(&full[..DIGEST_BYTES], &mut buf[prefix.len()..end]);
        &buf[..end]
    }
}
