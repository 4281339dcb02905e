//! Data-path failures, each knowing its cause, mapped to a status code in one place.

use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Response, StatusCode};

use crate::http::body::ResponseBody;

/// The header every proxy-generated error response carries, naming the cause.
pub const ERROR_HEADER: http::HeaderName = http::HeaderName::from_static("tern-proxy-error");

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Why the proxy answered instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("the request is malformed: {0}")]
    BadRequest(&'static str),
    #[error("no route matches the request")]
    NoRoute,
    #[error("the backend has no endpoints")]
    NoEndpoints,
    #[error("every endpoint of the backend is ejected")]
    NoHealthyEndpoints,
    #[error("the backend is at a circuit-breaker limit")]
    Overflow,
    #[error("the request is over a rate limit")]
    RateLimited,
    #[error("fault injection aborted the request")]
    FaultInjected(StatusCode),
    #[error("could not connect to the upstream")]
    ConnectFailed,
    #[error("the upstream reset or closed the connection")]
    UpstreamReset,
    /// The upstream's HTTP/1 response could not be parsed or framed (malformed head, invalid
    /// `Content-Length`, a `101` nobody asked for).
    #[error("the upstream sent an invalid response")]
    BadUpstreamResponse,
    /// HTTP/2 `REFUSED_STREAM`: the upstream did not process the request (safe to retry).
    /// Answered like any reset.
    #[error("the upstream refused the stream")]
    RefusedStream,
    #[error("the upstream did not answer in time")]
    Timeout,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoEndpoints | Self::NoHealthyEndpoints | Self::Overflow => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::FaultInjected(s) => s,
            Self::ConnectFailed
            | Self::UpstreamReset
            | Self::RefusedStream
            | Self::BadUpstreamResponse => StatusCode::BAD_GATEWAY,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The value of `tern-proxy-error`: short, stable, for dashboards and scripts.
    pub fn code(self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::NoRoute => "no-route",
            Self::NoEndpoints => "no-endpoints",
            Self::NoHealthyEndpoints => "no-healthy-endpoints",
            Self::Overflow => "overflow",
            Self::RateLimited => "rate-limited",
            Self::FaultInjected(_) => "fault-injected",
            Self::ConnectFailed => "connect-failed",
            Self::UpstreamReset | Self::RefusedStream => "upstream-reset",
            Self::BadUpstreamResponse => "upstream-protocol-error",
            Self::Timeout => "timeout",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::BadRequest(why) => why,
            Self::NoRoute => "no route\n",
            Self::NoEndpoints => "no endpoints\n",
            Self::NoHealthyEndpoints => "no healthy endpoints\n",
            Self::Overflow => "upstream overflow\n",
            Self::RateLimited => "rate limited\n",
            Self::FaultInjected(_) => "fault injected\n",
            Self::ConnectFailed => "upstream connect failed\n",
            Self::UpstreamReset | Self::RefusedStream => "upstream reset\n",
            Self::BadUpstreamResponse => "upstream sent an invalid response\n",
            Self::Timeout => "upstream timeout\n",
        }
    }

    /// The gRPC status a gRPC client gets instead: the two explicit ones, and the
    /// HTTP-to-gRPC mapping of gRPC's `doc/http-grpc-status-mapping.md` for the rest.
    fn grpc_status(self) -> (&'static str, &'static str) {
        match self {
            Self::Timeout => ("4", "upstream%20timeout"),
            Self::RateLimited => ("8", "rate%20limited"),
            Self::NoRoute => ("12", "no%20route"),
            Self::BadRequest(_) => ("13", "bad%20request"),
            Self::FaultInjected(s) => (
                match s.as_u16() {
                    400 => "13",
                    401 => "16",
                    403 => "7",
                    404 => "12",
                    429 | 502 | 503 | 504 => "14",
                    _ => "2",
                },
                "fault%20injected",
            ),
            Self::NoEndpoints
            | Self::NoHealthyEndpoints
            | Self::Overflow
            | Self::ConnectFailed
            | Self::UpstreamReset
            | Self::RefusedStream
            | Self::BadUpstreamResponse => ("14", "upstream%20unavailable"),
        }
    }

    /// The response sent downstream. Internal details (addresses, OS errors) stay in the logs.
    /// A gRPC client gets a trailers-only response (HTTP 200, status in the headers), which
    /// every gRPC library understands, rather than an HTTP error it would report as UNKNOWN.
    pub fn into_response(self, grpc: bool) -> Response<ResponseBody> {
        let mut resp = if grpc {
            let mut r = Response::new(ResponseBody::empty());
            let (status, message) = self.grpc_status();
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert(GRPC_STATUS, HeaderValue::from_static(status));
            h.insert(GRPC_MESSAGE, HeaderValue::from_static(message));
            r
        } else {
            let mut r = Response::new(ResponseBody::text(self.text()));
            *r.status_mut() = self.status();
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        };
        resp.headers_mut()
            .insert(ERROR_HEADER, HeaderValue::from_static(self.code()));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_clients_get_trailers_only_answers() {
        let r = ProxyError::Timeout.into_response(true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "4");
        assert_eq!(r.headers()[ERROR_HEADER], "timeout");
        let r = ProxyError::RateLimited.into_response(true);
        assert_eq!(r.headers()["grpc-status"], "8");
        let r = ProxyError::Overflow.into_response(false);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[ERROR_HEADER], "overflow");
        let r = ProxyError::FaultInjected(StatusCode::IM_A_TEAPOT).into_response(false);
        assert_eq!(r.status(), StatusCode::IM_A_TEAPOT);
    }
}
