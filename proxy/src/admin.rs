//! The admin port: liveness, readiness, metrics, the running config, and shutdown. A separate
//! listener on the control thread, loopback by default.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::app::Proxy;

pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let proxy = Arc::clone(&proxy);
                async move { Ok::<_, Infallible>(handle(req, &proxy, peer)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn handle(req: Request<Incoming>, proxy: &Proxy, peer: SocketAddr) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") => {
            if proxy.ready() {
                text(StatusCode::OK, "ready\n")
            } else if proxy.drain.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "no config loaded\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(proxy.shared.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::GET, "/config") => match proxy.snapshot() {
            Some(s) => {
                let body = serde_json::json!({ "version": s.version, "config": &*s.config });
                json(body.to_string())
            }
            None => text(StatusCode::SERVICE_UNAVAILABLE, "no config loaded\n"),
        },
        (&Method::GET, "/breakers") => match proxy.snapshot() {
            Some(s) => {
                let now = std::time::Instant::now();
                let views: Vec<serde_json::Value> = s
                    .backends()
                    .iter()
                    .map(|b| {
                        let mut v = serde_json::to_value(b.breaker_view(now))
                            .unwrap_or(serde_json::Value::Null);
                        if let Some(o) = v.as_object_mut() {
                            o.insert("outlier_detection".into(), b.outlier_enabled.into());
                            o.insert(
                                "load".into(),
                                serde_json::to_value(b.balancer.view(now))
                                    .unwrap_or(serde_json::Value::Null),
                            );
                        }
                        v
                    })
                    .collect();
                json(serde_json::Value::Array(views).to_string())
            }
            None => text(StatusCode::SERVICE_UNAVAILABLE, "no config loaded\n"),
        },
        (&Method::POST, "/shutdown") => {
            if peer.ip().is_loopback() {
                proxy.shutdown.cancel();
                text(StatusCode::OK, "shutting down\n")
            } else {
                text(
                    StatusCode::FORBIDDEN,
                    "shutdown is only accepted from loopback\n",
                )
            }
        }
        (_, "/live" | "/ready" | "/metrics" | "/config" | "/breakers" | "/shutdown") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /live, /ready, /metrics, /config, /breakers, POST /shutdown\n",
        ),
    }
}

fn json(body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
