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
