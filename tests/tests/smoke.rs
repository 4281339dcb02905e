//! The smallest end-to-end check: one backend behind the real proxy, over HTTP/1.1 and h2c.

use tern_e2e::{Proxy, TestBackend, config, http1_client, http2_client};

#[tokio::test]
async fn forwards_http1_and_http2() {
    let a = TestBackend::echo("a").await;
    let proxy = Proxy::start(config::simple(&[&a])).await;
    let r = http1_client().get(&proxy.url("web", "/x?y=1")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", proxy.logs());
    assert_eq!(r.backend(), Some("a"));
    assert_eq!(r.echo().path(), "/x?y=1");
    let r = http2_client().get(&proxy.url("web", "/h2")).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.echo().path(), "/h2");
}

/// Bodiless responses (HEAD, 204) still give their upstream connection back to the pool.
#[tokio::test]
async fn bodiless_responses_keep_the_upstream_connection() {
    let a = TestBackend::builder("a").status(204).start().await;
    let proxy = Proxy::start(config::simple(&[&a])).await;
    let client = http1_client();
    for _ in 0..5 {
        let r = client
            .send("HEAD", &proxy.url("web", "/"), &[], bytes::Bytes::new())
            .await;
        assert_eq!(r.status.as_u16(), 204);
    }
    assert_eq!(
        a.connections(),
        1,
        "one pooled upstream connection for 5 requests"
    );
}

/// The README's first command: `tern-proxy demo` runs every phase against its own backends and
/// ends with no failed request, and the split it reports is near 90/10.
#[test]
fn the_demo_runs_clean() {
    let out = std::process::Command::new(tern_e2e::proxy_binary())
        .args(["demo", "--duration", "2s"])
        .output()
        .expect("the demo starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for phase in [
        "pinned to the canary",
        "no-route",
        "ejected",
        "429",
        "0 errors",
    ] {
        assert!(
            stdout.contains(phase),
            "missing {phase:?}:\n{stdout}\n{stderr}"
        );
    }
    let last = stdout.lines().last().unwrap_or_default();
    let canary: f64 = last
        .split("canary ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no canary share in {last:?}"));
    assert!(
        (4.0..=16.0).contains(&canary),
        "canary share {canary} % in {last:?}"
    );
}
