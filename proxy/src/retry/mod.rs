//! Retries: which outcomes are retried (`policy`), how long to wait (`backoff`), and how many
//! retries a backend can take (`budget`). IO-free; the retry layer in the request path asks.
//!
//! The model, per request:
//!
//! 1. Before the first try: [`RetryPolicy::retriable_request`] decides whether the request may
//!    be replayed at all (an idempotent method or the route's opt-in, and a body that is empty
//!    or small and of known length, so it can be kept for a replay). Only then is its body kept.
//!    Every original request deposits in its backend's [`RetryBudget`].
//! 2. After a try: [`next_retry`] (or its parts) decides. The outcome must be one the route
//!    retries ([`RetryOn`]: failures without a response, listed statuses, gRPC codes in a
//!    trailers-only response) and attempts must remain (`max_attempts` counts the first try);
//!    then the budget must allow it (`ratio` of recent requests plus a floor). The budget is
//!    asked last so that only retries actually sent draw on it.
//! 3. The wait is the upstream's `Retry-After` (capped) or full-jitter exponential backoff.
//!
//! A gRPC status that arrives in trailers, after the response has started streaming to the
//! client, comes too late to retry: only trailers-only responses (status in the headers) are
//! classified by gRPC code.

mod backoff;
mod budget;
mod policy;

#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime};

pub use backoff::{Backoff, parse_retry_after};
pub use budget::{BudgetConfig, BudgetStats, RetryBudget};
pub use policy::{
    DEFAULT_MAX_BODY_BYTES, Failure, GRPC_STATUS, GrpcCode, GrpcCodes, Outcome, RetryOn,
    RetryPolicy, is_idempotent,
};
use tokio::time::Instant;

/// Why a request is not retried; a label for the retry metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The route does not retry this outcome.
    NotRetriable,
    /// `max_attempts` tries were made.
    AttemptsExhausted,
    /// The backend's retry budget is spent.
    BudgetExhausted,
}

impl GiveUp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotRetriable => "not-retriable",
            Self::AttemptsExhausted => "attempts-exhausted",
            Self::BudgetExhausted => "budget-exhausted",
        }
    }
}

/// After `attempt` tries (1 after the first) ended in `outcome`: the wait before the next try,
/// or why there is none. Draws on `budget` only when it answers `Ok`.
///
/// `now` is the monotonic time for the budget, `wall` the time an HTTP-date `Retry-After` is
/// measured from, and `random` a uniform `u64` for the jitter (`fastrand::u64(..)`).
pub fn next_retry(
    policy: &RetryPolicy,
    budget: &RetryBudget,
    attempt: u32,
    outcome: &Outcome<'_>,
    now: Instant,
    wall: SystemTime,
    random: u64,
) -> Result<Duration, GiveUp> {
    if !policy.on.matches(outcome) {
        return Err(GiveUp::NotRetriable);
    }
    if attempt >= policy.max_attempts {
        return Err(GiveUp::AttemptsExhausted);
    }
    if !budget.try_withdraw(now) {
        return Err(GiveUp::BudgetExhausted);
    }
    let retry_after = match outcome {
        Outcome::Response { headers, .. } => headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(v, wall)),
        Outcome::Failed(_) => None,
    };
    Ok(policy
        .backoff
        .delay(attempt.saturating_sub(1), random, retry_after))
}
