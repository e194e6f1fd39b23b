//! The HTTP endpoint on `control.metrics_address` (axum): `/metrics`
//! (OpenMetrics), `/status` (the status view as JSON) and `/healthz` (200
//! while the daemon's event loop answers). The event loop owns the state:
//! each request asks it for a fresh view over a channel, so a slow client
//! never holds the daemon up and no lock is shared.

use std::time::Duration;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::{mpsc, oneshot};

use super::{View, metrics, status};

/// A request for the current view, answered by the event loop.
pub type ViewRequest = oneshot::Sender<View>;

/// How long a request waits for the event loop before it counts as stuck.
const LOOP_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Api {
    views: mpsc::Sender<ViewRequest>,
}

impl Api {
    async fn view(&self) -> Option<View> {
        let (tx, rx) = oneshot::channel();
        self.views.send(tx).await.ok()?;
        tokio::time::timeout(LOOP_DEADLINE, rx).await.ok()?.ok()
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the xdplb event loop did not answer\n",
    )
        .into_response()
}

/// OpenMetrics for a scraper that asks for it (`Accept`), the Prometheus
/// text format otherwise.
async fn metrics_handler(State(api): State<Api>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match api.view().await {
        Some(v) if openmetrics => (
            [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            metrics::openmetrics(&v),
        )
            .into_response(),
        Some(v) => (
            [(header::CONTENT_TYPE, metrics::PROMETHEUS_CONTENT_TYPE)],
            metrics::prometheus_text(&v),
        )
            .into_response(),
        None => unavailable(),
    }
}

async fn status_handler(State(api): State<Api>) -> Response {
    match api.view().await {
        Some(v) => (
            [(header::CONTENT_TYPE, "application/json")],
            status::json(&v),
        )
            .into_response(),
        None => unavailable(),
    }
}

async fn healthz_handler(State(api): State<Api>) -> Response {
    match api.view().await {
        Some(_) => "ok\n".into_response(),
        None => unavailable(),
    }
}

/// The endpoint's routes.
pub fn router(views: mpsc::Sender<ViewRequest>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/status", get(status_handler))
        .route("/healthz", get(healthz_handler))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "xdplb serves /metrics, /status and /healthz\n",
            )
        })
        .with_state(Api { views })
}

/// Serve the endpoint on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, views: mpsc::Sender<ViewRequest>) {
    if let Err(e) = axum::serve(listener, router(views)).await {
        tracing::warn!(error = %e, "metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::api::view::samples::view;

    async fn get_path(addr: std::net::SocketAddr, path: &str) -> String {
        get_with(addr, path, "").await
    }

    async fn get_with(addr: std::net::SocketAddr, path: &str, headers: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn serves_metrics_status_and_healthz_from_the_loop() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, mut rx) = mpsc::channel::<ViewRequest>(8);
            tokio::spawn(serve(listener, tx));
            // The "event loop": answers four requests, then stops answering.
            let answered = tokio::spawn(async move {
                for _ in 0..4 {
                    let reply = rx.recv().await.unwrap();
                    let _ = reply.send(view());
                }
                rx // kept alive, never answering again
            });
            // Prometheus asks for OpenMetrics; curl and promtool get the
            // Prometheus text format.
            let accept = "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n";
            let m = get_with(addr, "/metrics", accept).await;
            assert!(m.starts_with("HTTP/1.1 200"), "{m}");
            assert!(m.contains("application/openmetrics-text"), "{m}");
            assert!(m.contains("# EOF"), "{m}");
            assert!(
                m.contains("xdplb_packets_total{reason=\"fwd_nat\"} 30"),
                "{m}"
            );
            let p = get_path(addr, "/metrics").await;
            assert!(p.contains("text/plain; version=0.0.4"), "{p}");
            assert!(p.contains("# TYPE xdplb_packets_total counter"), "{p}");
            assert!(!p.contains("# EOF"), "{p}");
            let s = get_path(addr, "/status").await;
            assert!(
                s.contains("application/json") && s.contains("\"203.0.113.21:80\""),
                "{s}"
            );
            let h = get_path(addr, "/healthz").await;
            assert!(h.starts_with("HTTP/1.1 200") && h.ends_with("ok\n"), "{h}");
            let nf = get_path(addr, "/nope").await;
            assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
            // A loop that no longer answers: healthz says so.
            let _rx = answered.await.unwrap();
            let h = get_path(addr, "/healthz").await;
            assert!(h.starts_with("HTTP/1.1 503"), "{h}");
        });
    }
}
