//! The last minutes at a glance: every [`TREND_INTERVAL`] a sample of what the status page charts (requests by
//! target, latency percentiles, held requests, each replica's lag), kept for [`TREND_WINDOW`].
//!
//! Sampling is driven by [`crate::Engine::handle_timeout`], which the probe schedule calls at least every
//! `check_period`: no timer of its own. A sample holds running totals, so a rate over any two samples (or from a
//! sample to the snapshot's own counters) is a subtraction.

use crate::status::{LatencyHistogram, StatusSnapshot, Target, TrendSample, LATENCY_BUCKETS};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often a sample is taken (at the first `handle_timeout` after this much time).
pub const TREND_INTERVAL: Duration = Duration::from_secs(5);

/// How long samples are kept.
pub const TREND_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A sample as kept: the instant it was taken instead of an age.
#[derive(Debug)]
struct Stored {
    at: Instant,
    sample: TrendSample,
}

/// The samples of the last [`TREND_WINDOW`].
#[derive(Debug, Default)]
pub(crate) struct Trend {
    samples: VecDeque<Stored>,
    /// When the next sample is due (None: at once).
    next_at: Option<Instant>,
    /// The latency histogram at the last sample (its counts are running totals).
    last_latency: LatencyHistogram,
}

impl Trend {
    /// Whether a sample is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.next_at.is_none_or(|at| now >= at)
    }

    /// Takes a sample of `snapshot`, taken at `now`, and forgets samples older than the window.
    pub(crate) fn record(&mut self, now: Instant, snapshot: &StatusSnapshot) {
        let counters = &snapshot.counters;
        let requests_total = Target::ALL.map(|target| counters.requests[target as usize].iter().sum());
        let mut interval = LatencyHistogram::default();
        for (bucket, (total, before)) in
            interval.counts.iter_mut().zip(counters.latency.counts.iter().zip(self.last_latency.counts.iter()))
        {
            *bucket = total.saturating_sub(*before);
        }
        let first = self.samples.is_empty();
        self.last_latency = counters.latency.clone();
        let sample = TrendSample {
            ago: Duration::ZERO,
            requests_total,
            latency_p50: if first { None } else { percentile(&interval, 50) },
            latency_p99: if first { None } else { percentile(&interval, 99) },
            held_requests: snapshot.held_requests,
            lag_bytes: snapshot
                .servers
                .iter()
                // A replica whose link is down or that is still syncing has no lag worth charting.
                .filter(|server| server.link_up == Some(true) && server.replication != Some("syncing"))
                .filter_map(|server| Some((server.address.clone(), server.lag_bytes?)))
                .collect(),
        };
        self.samples.push_back(Stored { at: now, sample });
        while self.samples.front().is_some_and(|s| now.saturating_duration_since(s.at) > TREND_WINDOW) {
            self.samples.pop_front();
        }
        self.next_at = Some(now + TREND_INTERVAL);
    }

    /// The samples, oldest first, with their ages at `now`.
    pub(crate) fn samples(&self, now: Instant) -> Vec<TrendSample> {
        self.samples
            .iter()
            .map(|stored| TrendSample { ago: now.saturating_duration_since(stored.at), ..stored.sample.clone() })
            .collect()
    }
}

/// The `percent`th percentile of `histogram`, interpolated linearly within its bucket (bucket `i` holds
/// latencies from 2^(i-1) to 2^i microseconds); None when it is empty.
pub(crate) fn percentile(histogram: &LatencyHistogram, percent: u64) -> Option<Duration> {
    let count = histogram.count();
    if count == 0 {
        return None;
    }
    // The rank of the wanted latency, 1-based: the smallest that at least `percent`% of them do not exceed.
    let rank = count.saturating_mul(percent).div_ceil(100).max(1);
    let mut below = 0;
    for (index, &in_bucket) in histogram.counts.iter().enumerate() {
        if in_bucket == 0 || below + in_bucket < rank {
            below += in_bucket;
            continue;
        }
        let low = if index == 0 { 0 } else { 1u64 << (index - 1) };
        let high = if index + 1 == LATENCY_BUCKETS { low * 2 } else { 1u64 << index };
        let into = (rank - below) as f64 / in_bucket as f64;
        let micros = low as f64 + (high - low) as f64 * into;
        return Some(Duration::from_nanos((micros * 1000.0) as u64));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(latencies_micros: &[u64]) -> LatencyHistogram {
        let mut histogram = LatencyHistogram::default();
        for &micros in latencies_micros {
            histogram.observe(Duration::from_micros(micros));
        }
        histogram
    }

    #[test]
    fn percentiles_fall_in_the_right_bucket() {
        assert_eq!(percentile(&LatencyHistogram::default(), 50), None);
        // 99 fast requests (100 µs: bucket 64-128) and one slow one (10 ms: bucket 8192-16384).
        let mut latencies = vec![100; 99];
        latencies.push(10_000);
        let h = histogram(&latencies);
        let p50 = percentile(&h, 50).expect("p50");
        assert!(p50 >= Duration::from_micros(64) && p50 <= Duration::from_micros(128), "{p50:?}");
        let p99 = percentile(&h, 99).expect("p99");
        assert!(p99 <= Duration::from_micros(128), "the 99th of 100 is still a fast one: {p99:?}");
        let p100 = percentile(&h, 100).expect("max");
        assert!(p100 >= Duration::from_micros(8192) && p100 <= Duration::from_micros(16_384), "{p100:?}");
    }
}
