//! The proxy's life: live reload under load, refused configs, listeners coming and going,
//! graceful shutdown (SIGTERM and the admin port), worker threads, and `tern-proxy validate`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tern_e2e::{Proxy, TestBackend, free_addr, http1_client, validate, wait_for};

const DEADLINE: Duration = Duration::from_secs(10);

/// A config with two routes: `/pinned` always to `b`, everything else split `wa`/`wb`.
/// `extra` adds a route, so a rewrite can change the route table as well as the weights.
fn config(a: &TestBackend, b: &TestBackend, wa: u32, wb: u32, extra: bool) -> String {
    let extra = if extra {
        "      - name: extra\n        matches: [{ path: { type: Exact, value: /extra } }]\n        backends: [{ name: a }]\n"
    } else {
        ""
    };
    format!(
        "workers: 1
shutdown_grace: 5s
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
{extra}      - name: pinned
        matches: [{{ path: {{ value: /pinned }} }}]
        backends: [{{ name: b }}]
      - name: split
        backends: [{{ name: a, weight: {wa} }}, {{ name: b, weight: {wb} }}]
backends:
  - {}
  - {}
",
        a.yaml(),
        b.yaml()
    )
}

async fn version(proxy: &Proxy) -> u64 {
    proxy.config().await["version"].as_u64().unwrap_or(0)
}

async fn wait_version(proxy: &Proxy, at_least: u64) {
    wait_for(
        &format!("config version {at_least}"),
        DEADLINE,
        async || version(proxy).await >= at_least,
    )
    .await;
}

#[tokio::test]
async fn fifty_reloads_under_load_lose_no_request_and_the_split_follows() {
    let a = TestBackend::echo("a").await;
    let b = TestBackend::echo("b").await;
    let proxy = Proxy::start(config(&a, &b, 100, 0, false)).await;
    let url = proxy.url("web", "/");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let client = http1_client();
            // Bounded: stops when told, and never runs past a hard cap.
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match client.try_send("GET", &url, &[], bytes::Bytes::new()).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!(
                            "failed: {} {:?} {}",
                            r.status,
                            r.header("tern-proxy-error"),
                            r.text()
                        );
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("failed: {e:#}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }

    for i in 1..=50u32 {
        let (wa, wb) = if i % 2 == 0 {
            (100 - i, i)
        } else {
            (i, 100 - i)
        };
        proxy.write_config(&config(&a, &b, wa, wb, i % 3 == 0));
        wait_version(&proxy, u64::from(i) + 1).await;
    }
    // The last config sends everything to b.
    proxy.write_config(&config(&a, &b, 0, 1, false));
    wait_version(&proxy, 52).await;
    let before = ok.load(Ordering::Relaxed);
    wait_for("traffic after the last reload", DEADLINE, async || {
        ok.load(Ordering::Relaxed) > before + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }

    assert_eq!(failed.load(Ordering::Relaxed), 0, "{}", proxy.logs());
    assert!(
        ok.load(Ordering::Relaxed) > 500,
        "too little traffic to prove anything"
    );
    // Split follows: after the final version, fresh requests all reach b.
    let client = http1_client();
    let a_before = a.requests();
    for _ in 0..100 {
        assert_eq!(client.get(&url).await.backend(), Some("b"));
    }
    assert_eq!(a.requests(), a_before);
    let reloads = proxy
        .metric("tern_config_reloads_total", &[("result", "ok")])
        .await;
    assert_eq!(reloads, Some(52.0), "initial load + 51 rewrites");
}

#[tokio::test]
async fn reload_keeps_idle_keepalive_connections_both_sides() {
    let a = TestBackend::echo("a").await;
    let b = TestBackend::echo("b").await;
    let proxy = Proxy::start(config(&a, &b, 1, 0, false)).await;
    let client = http1_client();
    let url = proxy.url("web", "/");
    assert_eq!(client.get(&url).await.backend(), Some("a"));
    assert_eq!(a.connections(), 1);

    proxy.write_config(&config(&a, &b, 1, 0, true));
    wait_version(&proxy, 2).await;
    for _ in 0..5 {
        assert_eq!(client.get(&url).await.backend(), Some("a"));
    }
    assert_eq!(
        a.connections(),
        1,
        "the pooled upstream connection survives a reload that keeps the backend"
    );
    let accepted = proxy
        .metric("tern_connections_total", &[("listener", "web")])
        .await;
    assert_eq!(
        accepted,
        Some(1.0),
        "the client's keep-alive connection stayed open"
    );
}

/// Each broken config is refused, the log names the field, the old config keeps serving.
#[tokio::test]
async fn invalid_configs_are_refused_and_the_last_good_one_keeps_serving() {
    let a = TestBackend::echo("a").await;
    let b = TestBackend::echo("b").await;
    let good = config(&a, &b, 1, 0, false);
    let proxy = Proxy::start(good.clone()).await;
    let url = proxy.url("web", "/");

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "syntax error",
            good.replace("routes:", "routes: [unclosed"),
            "invalid YAML",
        ),
        (
            "unknown field",
            good.replace("shutdown_grace: 5s", "shutdown_grace: 5s\nshutdwn: 1s"),
            "unknown field `shutdwn`",
        ),
        (
            "weight overflow",
            good.replace("weight: 1 }", "weight: 99999999999 }"),
            "weight",
        ),
        (
            "weight over the maximum",
            good.replace("weight: 1 }", "weight: 2000000 }"),
            "listeners[0].routes[1].backends[0].weight",
        ),
        (
            "duplicate route names",
            good.replace("name: pinned", "name: split"),
            "listeners[0].routes[1].name: duplicate route name",
        ),
        (
            "bad regex",
            good.replace(
                "{ path: { value: /pinned } }",
                "{ path: { type: RegularExpression, value: \"([\" } }",
            ),
            "listeners[0].routes[0].matches[0].path.value: invalid regex",
        ),
        (
            "unknown backend",
            good.replace("backends: [{ name: b }]", "backends: [{ name: nope }]"),
            "listeners[0].routes[0].backends[0].name: unknown backend \"nope\"",
        ),
    ];
    for (i, (what, text, expect_in_log)) in cases.iter().enumerate() {
        assert_ne!(text, &good, "case {what} must change the config");
        proxy.write_config(text);
        let failed = u32::try_from(i + 1).expect("few cases");
        proxy.wait_for_refused_reloads(failed, DEADLINE).await;
        let logs = proxy.logs();
        assert!(
            logs.contains(expect_in_log),
            "{what}: the log should say {expect_in_log:?}:\n{logs}"
        );
        assert_eq!(
            version(&proxy).await,
            1,
            "{what}: the running version changed"
        );
        let r = http1_client().get(&url).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, Some("a")), "{what}");
    }
    // A good file after the bad ones is applied.
    proxy.write_config(&config(&a, &b, 0, 1, false));
    wait_version(&proxy, 2).await;
    assert_eq!(http1_client().get(&url).await.backend(), Some("b"));
}

#[tokio::test]
async fn sighup_reloads_and_listeners_come_and_go() {
    let a = TestBackend::echo("a").await;
    let base = format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    routes: [{{ name: all, backends: [{{ name: a }}] }}]\nbackends:\n  - {}\n",
        a.yaml()
    );
    let proxy = Proxy::start(base.clone()).await;
    let second = free_addr();
    let with_second = base.replace(
        "backends:\n",
        &format!(
            "  - name: second\n    address: {second}\n    protocol: http1\n    routes: [{{ name: all, backends: [{{ name: a }}] }}]\nbackends:\n"
        ),
    );
    proxy.write_config(&with_second);
    wait_version(&proxy, 2).await;
    let r = http1_client().get(&format!("http://{second}/x")).await;
    assert_eq!(r.backend(), Some("a"));

    // Removing it stops accepting there.
    proxy.write_config(&base);
    wait_version(&proxy, 3).await;
    wait_for(
        "the removed listener refuses connections",
        DEADLINE,
        async || tokio::net::TcpStream::connect(second).await.is_err(),
    )
    .await;

    // SIGHUP re-reads the file even when it did not change.
    proxy.sighup();
    wait_version(&proxy, 4).await;
}

#[tokio::test]
async fn a_busy_port_refuses_the_config() {
    let a = TestBackend::echo("a").await;
    let base = format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    routes: [{{ name: all, backends: [{{ name: a }}] }}]\nbackends:\n  - {}\n",
        a.yaml()
    );
    let proxy = Proxy::start(base.clone()).await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr");
    proxy.write_config(&base.replace(
        "backends:\n",
        &format!("  - name: taken\n    address: {busy_addr}\n    routes: [{{ name: all, backends: [{{ name: a }}] }}]\nbackends:\n"),
    ));
    proxy.wait_for_refused_reloads(1, DEADLINE).await;
    assert!(
        proxy
            .logs()
            .contains(&format!("cannot bind listener taken on {busy_addr}"))
    );
    assert_eq!(version(&proxy).await, 1);
    assert_eq!(http1_client().get(&proxy.url("web", "/")).await.status, 200);
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let slow = TestBackend::builder("slow")
        .delay(Duration::from_millis(700))
        .start()
        .await;
    let proxy = Proxy::start(format!(
        "shutdown_grace: 10s\nlisteners:\n  - name: web\n    address: 127.0.0.1:0\n    routes: [{{ name: all, backends: [{{ name: slow }}] }}]\nbackends:\n  - {}\n",
        slow.yaml()
    ))
    .await;
    let url = proxy.url("web", "/");
    let in_flight: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { http1_client().no_pool().get(&url).await })
        })
        .collect();
    wait_for("10 requests at the backend", DEADLINE, async || {
        slow.requests() == 10
    })
    .await;

    proxy.sigterm();
    wait_for("/ready turns 503 while draining", DEADLINE, async || {
        !proxy.is_ready().await
    })
    .await;
    for r in in_flight {
        let r = r.await.expect("request task");
        assert_eq!(
            r.status, 200,
            "an in-flight request was cut by the shutdown"
        );
        assert_eq!(
            r.header("connection"),
            Some("close"),
            "an answer sent while draining says it is the connection's last"
        );
    }
    let status = proxy.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "{}", proxy.logs());
    assert!(
        tokio::net::TcpStream::connect(proxy.addr("web"))
            .await
            .is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn shutdown_on_the_admin_port_exits_zero() {
    let a = TestBackend::echo("a").await;
    let proxy = Proxy::start(tern_e2e::config::simple(&[&a])).await;
    assert_eq!(proxy.admin_get("/live").await.status, 200);
    assert_eq!(proxy.admin("GET", "/shutdown").await.status, 405);
    assert_eq!(proxy.shutdown().await.status, 200);
    let status = proxy.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn admin_reports_config_and_metrics() {
    let a = TestBackend::echo("a").await;
    let proxy = Proxy::start(tern_e2e::config::simple(&[&a])).await;
    let config = proxy.config().await;
    assert_eq!(config["version"], 1);
    assert_eq!(config["config"]["listeners"][0]["name"], "web");
    assert_eq!(
        config["config"]["backends"][0]["endpoints"][0],
        a.addr().to_string()
    );
    assert_eq!(proxy.metric("tern_config_version", &[]).await, Some(1.0));
    assert_eq!(proxy.admin_get("/nope").await.status, 404);
}

/// `workers: N` runs N worker threads; the default is the CPUs the process may use.
#[tokio::test]
async fn worker_threads_follow_the_config() {
    fn workers(pid: u32) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("proc")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.starts_with("tern-worker-"))
            .count()
    }
    let a = TestBackend::echo("a").await;
    // A thread names itself once it runs; on a busy machine that can trail readiness a little.
    let three = Proxy::start(format!("workers: 3\n{}", tern_e2e::config::simple(&[&a]))).await;
    wait_for("3 named worker threads", DEADLINE, async || {
        workers(three.pid()) == 3
    })
    .await;
    let default = Proxy::start(tern_e2e::config::simple(&[&a])).await;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    wait_for("one worker per CPU", DEADLINE, async || {
        workers(default.pid()) == cpus
    })
    .await;
    // And no more than that.
    assert_eq!(workers(three.pid()), 3);
}

#[test]
fn validate_lists_every_problem_and_accepts_the_example() {
    let (code, out) = validate(
        "listeners:
  - name: a
    address: 127.0.0.1:1
    routes:
      - name: r
        backends: [{ name: ghost, weight: 2000000 }]
      - name: r
        matches: [{ headers: [{ name: x, type: Present, value: v }] }]
        backends: [{ name: b }]
backends:
  - name: b
",
    );
    assert_eq!(code, 1, "{out}");
    for expected in [
        "4 problem(s)",
        "listeners[0].routes[0].backends[0].name: unknown backend \"ghost\"",
        "listeners[0].routes[0].backends[0].weight: 2000000 is over the maximum weight",
        "listeners[0].routes[1].name: duplicate route name \"r\"",
        "listeners[0].routes[1].matches[0].headers[0].value: type Present takes no value",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }

    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/tern-proxy.yaml"
    ))
    .expect("example config");
    let (code, out) = validate(&example);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("valid (3 listeners, 6 routes, 5 backends)"),
        "{out}"
    );
}

#[tokio::test]
async fn a_broken_file_at_startup_exits_one_with_the_reason() {
    let proxy = Proxy::spawn("listeners:\n  - name: web\n    adress: 127.0.0.1:1\n");
    let status = proxy.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        proxy.logs().contains("unknown field `adress`"),
        "{}",
        proxy.logs()
    );
}

/// On SIGTERM an HTTP/2 client gets GOAWAY: its open stream finishes, new streams are refused.
#[tokio::test]
async fn sigterm_sends_goaway_to_http2_clients() {
    let slow = TestBackend::builder("slow")
        .delay(Duration::from_millis(700))
        .start()
        .await;
    let proxy = Proxy::start(format!(
        "shutdown_grace: 10s\nlisteners:\n  - name: web\n    address: 127.0.0.1:0\n    protocol: http2\n    routes: [{{ name: all, backends: [{{ name: slow }}] }}]\nbackends:\n  - {}\n",
        slow.yaml()
    ))
    .await;
    let url = proxy.url("web", "/");
    let request = || http::Request::get(url.as_str()).body(()).expect("request");
    let mut h2 = tern_e2e::h2_connect(proxy.addr("web"))
        .await
        .expect("h2 connect");
    let (in_flight, _) = h2.send_request(request(), true).expect("open a stream");
    wait_for("the stream at the backend", DEADLINE, async || {
        slow.requests() == 1
    })
    .await;

    proxy.sigterm();
    let response = in_flight
        .await
        .expect("the open stream completes during the drain");
    assert_eq!(response.status(), 200);
    let refused = async {
        let mut h2 = h2.ready().await?;
        let (response, _) = h2.send_request(request(), true)?;
        response.await
    }
    .await;
    assert!(
        refused.is_err(),
        "a new stream after GOAWAY must be refused"
    );
    assert_eq!(slow.requests(), 1);
    assert_eq!(proxy.wait_exit(DEADLINE).await.code(), Some(0));
}

/// A pooled upstream connection idle past the backend's `idle_timeout` is not reused.
#[tokio::test]
async fn upstream_idle_timeout_retires_pooled_connections() {
    let a = TestBackend::echo("a").await;
    let proxy = Proxy::start(format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    routes: [{{ name: all, backends: [{{ name: a }}] }}]\nbackends:\n  - name: a\n    endpoints: [{}]\n    idle_timeout: 300ms\n",
        a.addr()
    ))
    .await;
    let client = http1_client();
    let url = proxy.url("web", "/");
    client.get(&url).await;
    client.get(&url).await;
    assert_eq!(a.connections(), 1, "reused while fresh");
    // The passage of time is what is under test here, not a wait for luck.
    tokio::time::sleep(Duration::from_millis(600)).await;
    client.get(&url).await;
    assert_eq!(a.connections(), 2, "an expired idle connection was reused");
}
