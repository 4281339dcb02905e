//! The wait before a retry: exponential backoff with full jitter, or the upstream's
//! `Retry-After`, capped.
//!
//! Full jitter (the n-th retry waits a uniform random time in `[0, min(max, base·2ⁿ)]`) spreads
//! the retries of many clients that failed together, so they do not come back in lockstep.
//! Everything here is a pure function: the caller passes the random number and the wall time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

/// Backoff parameters, compiled from a route's retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry's wait; it doubles per retry.
    pub base: Duration,
    /// The largest ceiling, however many retries came before.
    pub max: Duration,
    /// The longest `Retry-After` obeyed: a larger value waits only this long, so an upstream
    /// cannot park the request (and its client) for an hour.
    pub max_retry_after: Duration,
}

/// Envoy's defaults (25 ms, ten times that at most); `Retry-After` obeyed up to 10 s.
impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The ceiling of retry `retry`'s wait (0 for the first retry): `min(max, base·2^retry)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        1u32.checked_shl(retry)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max, |d| d.min(self.max))
    }

    /// Full jitter: `random` (uniform over `u64`, e.g. `fastrand::u64(..)`) scaled into
    /// `[0, ceiling(retry)]`.
    pub fn jittered(&self, retry: u32, random: u64) -> Duration {
        let ceiling = u64::try_from(self.ceiling(retry).as_nanos()).unwrap_or(u64::MAX);
        // Multiply-and-shift maps u64 onto 0..=ceiling without division or modulo bias.
        let nanos = (u128::from(random) * (u128::from(ceiling) + 1)) >> 64;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(ceiling))
    }

    /// The wait before retry `retry`: the upstream's `Retry-After` if it gave one (capped at
    /// `max_retry_after`), else the jittered backoff.
    pub fn delay(&self, retry: u32, random: u64, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(wait) => wait.min(self.max_retry_after),
            None => self.jittered(retry, random),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.base.is_zero() {
            Err("backoff base must be more than 0".to_owned())
        } else if self.base > self.max {
            Err(format!(
                "backoff base {:?} is more than its max {:?}",
                self.base, self.max
            ))
        } else {
            Ok(())
        }
    }
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3) into a wait from `now`.
///
/// Accepts delay-seconds (`120`; absurdly many digits saturate, the cap applies later) and an
/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`; a date in the past means "now"). The obsolete
/// RFC 850 and asctime date forms, which no current server sends, and anything malformed give
/// `None`: the ordinary backoff applies.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let bytes = value.as_bytes().trim_ascii();
    if !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit) {
        let secs = bytes.iter().fold(0u64, |n, d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
        return Some(Duration::from_secs(secs));
    }
    let at = UNIX_EPOCH.checked_add(Duration::from_secs(imf_fixdate(bytes)?))?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Seconds since the Unix epoch of an IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`, which has
/// fixed columns. Dates before 1970 give `None` (and would be in the past anyway).
fn imf_fixdate(s: &[u8]) -> Option<u64> {
    const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    if s.len() != 29
        || !DAYS.contains(&s.get(0..3)?)
        || s.get(3..5)? != b", "
        || s[7] != b' '
        || s[11] != b' '
        || s[16] != b' '
        || s[19] != b':'
        || s[22] != b':'
        || s.get(25..29)? != b" GMT"
    {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == &s[8..11])? + 1;
    let (day, year) = (digits(&s[5..7])?, digits(&s[12..16])?);
    let (hour, minute, second) = (
        digits(&s[17..19])?,
        digits(&s[20..22])?,
        digits(&s[23..25])?,
    );
    let month = u64::try_from(month).ok()?;
    if day == 0 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_since_epoch(year, month, day)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

fn digits(s: &[u8]) -> Option<u64> {
    s.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian), by H. Hinnant's
/// `days_from_civil`; `None` before 1970.
fn days_since_epoch(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March is 0: the leap day ends the year
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}
