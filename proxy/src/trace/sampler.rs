//! The sampling decision for traces that start here, by ratio, from the trace id.

use super::TraceId;

/// Samples a share of new traces, deciding from the trace id alone: OpenTelemetry's
/// `TraceIdRatioBased`, bit for bit. The low 8 bytes of the trace id, as a big-endian number
/// shifted right by one, are compared with `ratio × 2⁶³`. So every hop (and every OpenTelemetry
/// SDK) configured with the same ratio makes the same choice for the same trace, and a trace
/// sampled at 1 % is also sampled at 10 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    /// `None`: always. Otherwise sampled when `low >> 1 < bound`.
    bound: Option<u64>,
}

impl Sampler {
    /// A sampler for `ratio` (clamped to 0..=1; NaN counts as 0).
    pub fn ratio(ratio: f64) -> Self {
        if ratio >= 1.0 {
            return Self { bound: None };
        }
        // As the SDK computes it; `as` saturates, and NaN becomes 0.
        let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
        Self { bound: Some(bound) }
    }

    pub const fn always() -> Self {
        Self { bound: None }
    }

    pub const fn never() -> Self {
        Self { bound: Some(0) }
    }

    pub fn should_sample(&self, trace_id: &TraceId) -> bool {
        let Some(bound) = self.bound else {
            return true;
        };
        let bytes = trace_id.to_bytes();
        let mut low = [0u8; 8];
        low.copy_from_slice(&bytes[8..]);
        (u64::from_be_bytes(low) >> 1) < bound
    }
}
