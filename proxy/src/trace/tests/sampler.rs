use opentelemetry::trace::{SpanKind, TraceId as OtelTraceId};
use opentelemetry_sdk::trace::{Sampler as OtelSampler, SamplingDecision, ShouldSample};

use crate::trace::{Sampler, TraceId};

/// The low 8 bytes decide: a trace id whose low half is `low`.
fn with_low(low: u64) -> TraceId {
    TraceId::from_u128((0xdead_beef_u128 << 64) | u128::from(low))
}

#[test]
fn the_threshold_is_the_sdks() {
    let half = Sampler::ratio(0.5);
    // low >> 1 < 2^62 <=> low < 2^63.
    assert!(half.should_sample(&with_low((1 << 63) - 1)));
    assert!(!half.should_sample(&with_low(1 << 63)));
    assert!(half.should_sample(&with_low(0)));
    // The high half plays no part: a 64-bit B3 id samples like its 128-bit padding.
    assert_eq!(
        half.should_sample(&TraceId::from_u128(5)),
        half.should_sample(&with_low(5))
    );
}

#[test]
fn edges() {
    let all = with_low(u64::MAX);
    assert!(Sampler::ratio(1.0).should_sample(&all));
    assert!(Sampler::ratio(7.0).should_sample(&all));
    assert!(Sampler::always().should_sample(&all));
    assert!(!Sampler::ratio(0.0).should_sample(&with_low(0)));
    assert!(!Sampler::ratio(-1.0).should_sample(&with_low(0)));
    assert!(!Sampler::ratio(f64::NAN).should_sample(&with_low(0)));
    assert!(!Sampler::never().should_sample(&with_low(0)));
    assert_eq!(Sampler::ratio(0.0), Sampler::never());
}

#[test]
fn agrees_with_opentelemetry_trace_id_ratio_based() {
    let mut rng = fastrand::Rng::with_seed(1);
    for ratio in [0.0, 0.001, 0.01, 0.1, 0.5, 0.9, 0.999, 1.0] {
        let ours = Sampler::ratio(ratio);
        let theirs = OtelSampler::TraceIdRatioBased(ratio);
        for _ in 0..2000 {
            let id = TraceId::random(&mut rng);
            let result = theirs.should_sample(
                None,
                OtelTraceId::from_bytes(id.to_bytes()),
                "x",
                &SpanKind::Server,
                &[],
                &[],
            );
            let sampled = result.decision == SamplingDecision::RecordAndSample;
            assert_eq!(ours.should_sample(&id), sampled, "ratio {ratio}, {id}");
        }
    }
}

#[test]
fn ratios_sample_their_share_and_nest() {
    let mut rng = fastrand::Rng::with_seed(9);
    let ids: Vec<TraceId> = (0..100_000).map(|_| TraceId::random(&mut rng)).collect();
    let one = Sampler::ratio(0.01);
    let ten = Sampler::ratio(0.1);
    let at_one = ids.iter().filter(|id| one.should_sample(id)).count();
    let at_ten = ids.iter().filter(|id| ten.should_sample(id)).count();
    assert!((800..=1200).contains(&at_one), "{at_one}");
    assert!((9_500..=10_500).contains(&at_ten), "{at_ten}");
    assert!(
        ids.iter()
            .filter(|id| one.should_sample(id))
            .all(|id| ten.should_sample(id)),
        "sampled at 1 % implies sampled at 10 %"
    );
}
