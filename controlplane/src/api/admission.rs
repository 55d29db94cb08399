//! Admission control: how fast one client may submit calls (a token bucket
//! per client address; each namespace's own rate is in `tenants.rs`), and how many calls
//! may wait in the queues (see `QueuedCalls` in `watch.rs`). Over a bound
//! a submit is refused with RESOURCE_EXHAUSTED and a `retry-after-ms` hint,
//! before anything is written to etcd.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The admission bounds (control-plane settings).
#[derive(Clone, Debug)]
pub struct Admission {
    /// Calls queued (accepted, not yet running) per function.
    pub max_queued_per_function: u64,
    /// Calls queued in the whole cluster.
    pub max_queued: u64,
    /// Params bytes of all queued calls together: the leader holds them in
    /// memory until the calls run.
    pub max_queued_bytes: u64,
    /// Submits (Submit and Invoke) per second a client may sustain.
    pub submit_rate: f64,
    /// Submits a client may send at once after a quiet period.
    pub submit_burst: f64,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            max_queued_per_function: 1000,
            max_queued: 10_000,
            max_queued_bytes: 256 << 20,
            submit_rate: 200.0,
            submit_burst: 400.0,
        }
    }
}

impl Admission {
    pub fn queue_bounds(&self) -> crate::watch::QueueBounds {
        crate::watch::QueueBounds {
            per_function: self.max_queued_per_function,
            per_namespace: 0,
            total: self.max_queued,
            bytes: self.max_queued_bytes,
        }
    }
}

/// How long a client refused for a full queue is told to wait: queues
/// drain at the speed of calls, which the control plane does not predict.
pub const QUEUE_FULL_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Clone, Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now.max(self.at);
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), Duration> {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if rate <= 0.0 {
            return Err(Duration::from_secs(60));
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }

    /// Whether the bucket is full again (its client has been quiet): it
    /// can be forgotten, a new one being the same.
    fn is_full(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.refill(now, rate, burst);
        self.tokens >= burst
    }
}

/// One bucket per client address.
pub struct SubmitLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl std::fmt::Debug for SubmitLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitLimiter")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

/// Buckets kept before idle ones are forgotten.
const MAX_BUCKETS: usize = 10_000;

impl SubmitLimiter {
    pub fn new(rate: f64, burst: f64) -> SubmitLimiter {
        SubmitLimiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `client`'s bucket, or says how long to wait.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("poisoned");
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&client) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| !b.is_full(now, rate, burst));
        }
        buckets
            .entry(client)
            .or_insert_with(|| Bucket::full(self.burst, now))
            .take(now, self.rate, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3.0, t0);
        for _ in 0..3 {
            assert!(b.take(t0, 10.0, 3.0).is_ok());
        }
        let wait = b.take(t0, 10.0, 3.0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // 50 ms later: half a token, 50 ms still to wait.
        let wait = b
            .take(t0 + Duration::from_millis(50), 10.0, 3.0)
            .unwrap_err();
        assert!((wait.as_secs_f64() - 0.05).abs() < 1e-9, "{wait:?}");
        assert!(b.take(t0 + Duration::from_millis(100), 10.0, 3.0).is_ok());
        // A long pause refills to the burst, no more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(later, 10.0, 3.0).is_ok());
        }
        assert!(b.take(later, 10.0, 3.0).is_err());
    }

    #[test]
    fn clients_have_their_own_buckets() {
        let limiter = SubmitLimiter::new(1.0, 2.0);
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(limiter.check(a, t0).is_ok());
        assert!(limiter.check(a, t0).is_ok());
        assert_eq!(limiter.check(a, t0), Err(Duration::from_secs(1)));
        assert!(limiter.check(b, t0).is_ok());
        assert!(limiter.check(a, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn idle_buckets_are_forgotten_when_there_are_too_many() {
        let limiter = SubmitLimiter::new(1.0, 1.0);
        let t0 = Instant::now();
        for i in 0..MAX_BUCKETS as u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(limiter.check(ip, t0).is_ok());
        }
        // All empty: none forgotten, the table grows by one.
        let extra: IpAddr = "255.255.255.255".parse().unwrap();
        assert!(limiter.check(extra, t0).is_ok());
        assert_eq!(limiter.buckets.lock().unwrap().len(), MAX_BUCKETS + 1);
        // Refilled: forgotten.
        let later: IpAddr = "255.255.255.254".parse().unwrap();
        assert!(limiter.check(later, t0 + Duration::from_secs(5)).is_ok());
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
    }
}
