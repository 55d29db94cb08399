//! Every request to containerd timed, for the agent's `/metrics`: a
//! layer on the one channel the driver uses, so no call site is missed.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::Channel;

/// Told of each containerd request: its method ("Tasks.Create"), how long
/// until its response arrived, and whether it succeeded.
pub type RequestObserver = fn(method: &str, elapsed: Duration, ok: bool);

static OBSERVER: OnceLock<RequestObserver> = OnceLock::new();

/// Sets the process's observer of containerd requests (the first call
/// wins; requests are not observed before it).
pub fn observe_requests(observer: RequestObserver) {
    let _ = OBSERVER.set(observer);
}

/// The driver's channel, timing each request for the observer.
#[derive(Clone)]
pub struct TimedChannel {
    inner: Channel,
}

impl TimedChannel {
    pub fn new(inner: Channel) -> Self {
        TimedChannel { inner }
    }
}

/// "/containerd.services.tasks.v1.Tasks/Create" -> "Tasks.Create".
fn method_name(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    let service = service.rsplit('.').next().unwrap_or(service);
    format!("{service}.{method}")
}

impl tower_service::Service<http::Request<Body>> for TimedChannel {
    type Response = http::Response<Body>;
    type Error = <Channel as tower_service::Service<http::Request<Body>>>::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let observer = OBSERVER.get().copied();
        let method = observer.map(|_| method_name(request.uri().path()));
        let start = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            if let (Some(observe), Some(method)) = (observer, method) {
                // An error status comes in the headers of a trailers-only
                // response; one in trailers counts as success here.
                let ok = match &response {
                    Ok(r) => r
                        .headers()
                        .get("grpc-status")
                        .is_none_or(|status| status.as_bytes() == b"0"),
                    Err(_) => false,
                };
                observe(&method, start.elapsed(), ok);
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn method_names_are_short() {
        assert_eq!(
            super::method_name("/containerd.services.tasks.v1.Tasks/Create"),
            "Tasks.Create"
        );
        assert_eq!(super::method_name("/x/Y"), "x.Y");
    }
}
