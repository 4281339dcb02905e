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
