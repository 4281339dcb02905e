//! Data-path failures, each knowing its cause, mapped to a status code in one place.

use http::{HeaderValue, Response, StatusCode};

use crate::http::body::ResponseBody;

/// The header every proxy-generated error response carries, naming the cause.
pub const ERROR_HEADER: http::HeaderName = http::HeaderName::from_static("tern-proxy-error");

/// Why the proxy answered instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("the request is malformed: {0}")]
    BadRequest(&'static str),
    #[error("no route matches the request")]
    NoRoute,
    #[error("the backend has no endpoints")]
    NoEndpoints,
    #[error("could not connect to the upstream")]
    ConnectFailed,
    #[error("the upstream reset or closed the connection")]
    UpstreamReset,
    #[error("the upstream did not answer in time")]
    Timeout,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoEndpoints => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectFailed | Self::UpstreamReset => StatusCode::BAD_GATEWAY,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The value of `tern-proxy-error`: short, stable, for dashboards and scripts.
    pub fn code(self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::NoRoute => "no-route",
            Self::NoEndpoints => "no-endpoints",
            Self::ConnectFailed => "connect-failed",
            Self::UpstreamReset => "upstream-reset",
            Self::Timeout => "timeout",
        }
    }

    /// The response sent downstream. Internal details (addresses, OS errors) stay in the logs.
    pub fn into_response(self) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::text(match self {
            Self::BadRequest(why) => why,
            Self::NoRoute => "no route\n",
            Self::NoEndpoints => "no endpoints\n",
            Self::ConnectFailed => "upstream connect failed\n",
            Self::UpstreamReset => "upstream reset\n",
            Self::Timeout => "upstream timeout\n",
        }));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(ERROR_HEADER, HeaderValue::from_static(self.code()));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        resp
    }
}
