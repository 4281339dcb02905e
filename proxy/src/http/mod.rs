//! HTTP: the downstream server, the request path, the upstream HTTP/1.1 client and pool, and
//! their bodies.

pub mod body;
pub mod client;
pub mod exchange;
pub mod h1;
pub mod h2client;
pub mod h2io;
pub mod headers;
pub mod observe;
pub mod pool;
pub mod proxy;
pub mod server;
