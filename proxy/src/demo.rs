//! `tern-proxy demo`: the proxy on loopback in front of demo backends: `stable` and `canary`
//! split 90/10 with a header-pinned canary route, an `orders` backend with one broken endpoint
//! (retries hide it, outlier detection ejects it), and a rate-limited route. Prints what it
//! observes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::app::{self, RunOptions};

pub async fn run(duration: Duration) -> anyhow::Result<()> {
    let stable = backend("stable", 200).await?;
    let canary = backend("canary", 200).await?;
    let broken = backend("broken", 500).await?;
    let listen = free_port()?;
    let admin = free_port()?;
    let dir = std::env::temp_dir().join(format!("tern-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path: PathBuf = dir.join("tern-proxy.yaml");
    std::fs::write(&path, config(listen, admin, stable, canary, broken))?;
    println!(
        "demo backends: stable on {stable}, canary on {canary}, broken (always 500) on {broken}"
    );
    println!("proxy on http://{listen}, admin on http://{admin}");
    println!(
        "config: {} (edit it while the demo runs: the proxy reloads it live)\n",
        path.display()
    );

    let proxy = tokio::spawn(app::run(RunOptions {
        config: path.clone(),
        workers: Some(1),
    }));
    wait_ready(admin).await?;

    let mut sender = connect(listen).await?;
    println!("GET / with x-canary: always (pinned to the canary):");
    for _ in 0..3 {
        let (status, backend, body) = get(&mut sender, "/", Some(("x-canary", "always"))).await?;
        println!("  {status} from {backend}: {}", body.trim());
    }
    let (status, err, _) = get(&mut sender, "/", Some(("host", "nobody.example"))).await?;
    println!("GET / for host nobody.example (no route): {status}, tern-proxy-error: {err}\n");

    println!(
        "GET /orders x20: backend `orders` = [stable, broken]; retries on 5xx, outlier detection"
    );
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for _ in 0..20 {
        let (status, _, _) = get(&mut sender, "/orders", None).await?;
        *statuses.entry(status).or_default() += 1;
    }
    println!("  client saw: {statuses:?} (the broken endpoint's 500s were retried elsewhere)");
    let (_, _, breakers) = get(&mut connect(admin).await?, "/breakers", None).await?;
    let ejected = serde_json::from_str::<serde_json::Value>(&breakers)
        .ok()
        .and_then(|v| {
            v.as_array()?
                .iter()
                .find(|b| b["backend"] == "orders")
                .map(|b| {
                    b["outlier"]["endpoints"]
                        .as_array()
                        .map(|eps| {
                            eps.iter()
                                .map(|e| {
                                    let s = |k: &str| e[k].as_str().unwrap_or("?").to_owned();
                                    format!("{} {}", s("addr"), s("state"))
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default()
                })
        })
        .unwrap_or_default();
    println!("  GET /breakers (admin): {ejected}\n");

    println!("GET /limited x10 at once: route limit 5 per second, burst 5");
    let mut line = Vec::new();
    for _ in 0..10 {
        let (status, _, _) = get(&mut sender, "/limited", None).await?;
        line.push(status.to_string());
    }
    println!(
        "  {} (429s carry Retry-After and RateLimit headers)\n",
        line.join(" ")
    );

    println!("GET / for {duration:?}, split 90/10 (observed, cumulative):");
    let start = Instant::now();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut next_report = Duration::from_secs(1);
    let mut errors = 0u64;
    let mut first_error: Option<String> = None;
    while start.elapsed() < duration {
        match get(&mut sender, "/", None).await {
            Ok((200, backend, _)) => *counts.entry(backend).or_default() += 1,
            failed => {
                errors += 1;
                let what = match failed {
                    Ok((status, who, _)) => format!("{status} {who}"),
                    Err(e) => format!("{e:#}"),
                };
                sender = connect(listen)
                    .await
                    .with_context(|| format!("reconnecting to the proxy after: {what}"))?;
                first_error.get_or_insert(what);
            }
        }
        if start.elapsed() >= next_report {
            println!("  {:>3}s  {}", next_report.as_secs(), shares(&counts));
            next_report += Duration::from_secs(1);
        }
        // A few hundred requests a second: enough to see the split, not a load test.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let total: u64 = counts.values().sum();
    let first = first_error
        .map(|e| format!(" (first: {e})"))
        .unwrap_or_default();
    println!(
        "\n{total} requests, {errors} errors{first}: {}",
        shares(&counts)
    );

    let _ = post_shutdown(admin).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), proxy).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn shares(counts: &BTreeMap<String, u64>) -> String {
    let total: u64 = counts.values().sum::<u64>().max(1);
    counts
        .iter()
        .map(|(b, n)| format!("{b} {:.1}% ({n})", *n as f64 * 100.0 / total as f64))
        .collect::<Vec<_>>()
        .join("  ")
}

fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    stable: SocketAddr,
    canary: SocketAddr,
    broken: SocketAddr,
) -> String {
    format!(
        r#"# Written by `tern-proxy demo`. Schema: docs/config.md
admin:
  address: {admin}
workers: 1
shutdown_grace: 2s
listeners:
  - name: demo
    address: {listen}
    protocol: auto
    routes:
      - name: pinned-canary
        hostnames: [demo.local]
        matches:
          - headers:
              - {{ name: x-canary, value: always }}
        backends:
          - {{ name: canary }}
      - name: orders
        hostnames: [demo.local]
        matches:
          - path: {{ type: PathPrefix, value: /orders }}
        timeout: 2s
        retry: {{ max_attempts: 3, on: 5xx }}
        backends:
          - {{ name: orders }}
      - name: limited
        hostnames: [demo.local]
        matches:
          - path: {{ type: PathPrefix, value: /limited }}
        rate_limit: {{ rate: 5, burst: 5 }}
        backends:
          - {{ name: stable }}
      - name: web
        hostnames: [demo.local]
        matches:
          - path: {{ type: PathPrefix, value: / }}
        backends:
          - {{ name: stable, weight: 90 }}
          - {{ name: canary, weight: 10 }}
backends:
  - name: stable
    endpoints: [{stable}]
  - name: canary
    endpoints: [{canary}]
  - name: orders
    endpoints: [{stable}, {broken}]
    load_balancer: {{ policy: round_robin }}
    outlier_detection: {{ consecutive_failures: 3, base_ejection_time: 30s, max_ejection_percent: 50 }}
"#
    )
}

fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

async fn backend(name: &'static str, status: u16) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                    let mut r =
                        Response::new(Full::new(Bytes::from(format!("hello from {name}\n"))));
                    *r.status_mut() =
                        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                    r.headers_mut()
                        .insert("x-backend", http::HeaderValue::from_static(name));
                    Ok::<_, Infallible>(r)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn get(
    sender: &mut Sender,
    path: &str,
    header: Option<(&str, &str)>,
) -> anyhow::Result<(u16, String, String)> {
    sender.ready().await?;
    let mut req = Request::get(path);
    match header {
        Some(("host", h)) => req = req.header("host", h),
        Some((k, v)) => req = req.header("host", "demo.local").header(k, v),
        None => req = req.header("host", "demo.local"),
    }
    let resp = sender.send_request(req.body(Empty::new())?).await?;
    let status = resp.status().as_u16();
    let who = resp
        .headers()
        .get("x-backend")
        .or_else(|| resp.headers().get(crate::error::ERROR_HEADER))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, who, String::from_utf8_lossy(&body).into_owned()))
}

async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = connect(admin).await
            && let Ok((200, _, _)) = get(&mut s, "/ready", None).await
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the proxy did not become ready within 10s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post_shutdown(admin: SocketAddr) -> anyhow::Result<()> {
    let mut s = connect(admin).await?;
    s.ready().await?;
    let req = Request::post("/shutdown")
        .header("host", "admin")
        .body(Empty::new())?;
    s.send_request(req).await?;
    Ok(())
}
