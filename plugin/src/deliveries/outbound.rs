//! The [`Sender`](crate::ports::Sender) over `wasi:http/outgoing-handler`, all requests of a
//! batch in flight together, and what each `wasi:http` error code means for a delivery.

use crate::bindings::wasi::http::types::ErrorCode;
use crate::ports::{AttemptResult, DESTINATION_REFUSED};

/// What a `wasi:http` error code means for the delivery to `url`: a refused destination, a
/// failure worth retrying, or one no retry can change.
///
/// Permanent are the codes that say the request itself is wrong, since every retry sends the
/// same request: its method, URI, headers or body were refused by the HTTP client or a proxy
/// before any receiver saw them. Everything about the network, the receiver or the host's own
/// state (DNS, connections, TLS, timeouts, protocol errors, configuration) may pass, so it is
/// retried. `HttpProtocolError` is retried: the receiver's side of the exchange produces it too.
pub fn attempt_result(code: &ErrorCode, url: &str) -> AttemptResult {
    use AttemptResult::{Failed, Permanent, Refused};
    match code {
        ErrorCode::DestinationIpProhibited => Refused(DESTINATION_REFUSED.into()),
        // The host's SSRF guard explains a refusal this way (DESIGN.md: the guard lives in the
        // host); the explanation is the attempt's reason as given.
        ErrorCode::InternalError(Some(text)) if is_refusal(text) => Refused(text.clone()),
        ErrorCode::ConnectionRefused => Failed("connection refused".into()),
        ErrorCode::ConnectionTimeout => Failed("connection timed out".into()),
        ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
            Failed("timed out waiting for the response".into())
        }
        ErrorCode::ConnectionTerminated => Failed("connection closed by the receiver".into()),
        ErrorCode::DnsError(payload) => {
            let mut reason = unresolved(url);
            let details: Vec<String> = [
                payload.rcode.as_ref().map(|rcode| format!("rcode {rcode}")),
                payload.info_code.map(|info| format!("info code {info}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !details.is_empty() {
                reason.push_str(&format!(" ({})", details.join(", ")));
            }
            Failed(reason)
        }
        ErrorCode::DestinationNotFound => Failed(unresolved(url)),
        ErrorCode::TlsCertificateError | ErrorCode::TlsProtocolError | ErrorCode::TlsAlertReceived(_) => {
            Failed("TLS handshake failed".into())
        }
        // The request as built: the same on every attempt.
        ErrorCode::HttpRequestDenied
        | ErrorCode::HttpRequestMethodInvalid
        | ErrorCode::HttpRequestUriInvalid
        | ErrorCode::HttpRequestUriTooLong
        | ErrorCode::HttpRequestLengthRequired
        | ErrorCode::HttpRequestBodySize(_)
        | ErrorCode::HttpRequestHeaderSectionSize(_)
        | ErrorCode::HttpRequestHeaderSize(_)
        | ErrorCode::HttpRequestTrailerSectionSize(_)
        | ErrorCode::HttpRequestTrailerSize(_) => Permanent(format!("the request was refused as malformed: {code:?}")),
        other => Failed(format!("request failed: {other:?}")),
    }
}

/// Whether a host's error text is the SSRF guard's explanation of a refused destination.
fn is_refusal(text: &str) -> bool {
    text.strip_prefix(DESTINATION_REFUSED)
        .is_some_and(|rest| rest.starts_with(": "))
}

/// The reason recorded when the destination's name did not resolve, naming it.
fn unresolved(url: &str) -> String {
    let host = url::Url::parse(url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_else(|| url.to_owned());
    format!("the destination's name {host} did not resolve")
}

/// `wasi:http/outgoing-handler` as a [`Sender`].
#[cfg(target_arch = "wasm32")]
pub mod wasi_http {
    use super::attempt_result;
    use crate::bindings::wasi::http::outgoing_handler;
    use crate::bindings::wasi::http::types::{
        Fields, FutureIncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme,
    };
    use crate::ports::{Answer, AttemptResult, MAX_LOGGED_BODY, Request, Sender};

    /// Largest write `blocking-write-and-flush` accepts.
    const WRITE_CHUNK: usize = 4096;

    /// The host's outgoing HTTP.
    pub struct WasiHttp;

    impl Sender for WasiHttp {
        fn send_all(&self, requests: &[Request]) -> Vec<AttemptResult> {
            let mut targets: Vec<(&str, Result<Target, AttemptResult>)> = Vec::new();
            let started: Vec<Result<FutureIncomingResponse, AttemptResult>> = requests
                .iter()
                .map(|request| {
                    // A batch goes mostly to one or a few webhooks: parse each URL once.
                    let at = match targets.iter().position(|(url, _)| *url == request.url) {
                        Some(at) => at,
                        None => {
                            targets.push((&request.url, Target::of(&request.url)));
                            targets.len() - 1
                        }
                    };
                    match &targets[at].1 {
                        Ok(target) => start(request, target),
                        Err(result) => Err(result.clone()),
                    }
                })
                .collect();
            // Every request is in flight; the call ends with the last answer, so waiting for
            // them in turn takes as long as waiting for whichever comes first, and costs one
            // host call per answer instead of a poll over every pending one each time.
            started
                .into_iter()
                .zip(requests)
                .map(|(started, request)| match started {
                    Ok(future) => {
                        future.subscribe().block();
                        finish(&future, &request.url)
                    }
                    Err(result) => result,
                })
                .collect()
        }
    }

    /// Where a URL's requests go, as `wasi:http` takes it.
    struct Target {
        scheme: Scheme,
        authority: String,
        path_with_query: String,
    }

    impl Target {
        /// Built from the stored webhook alone, so the next attempt would fail the same way.
        fn of(url: &str) -> Result<Target, AttemptResult> {
            let url = url::Url::parse(url).map_err(|_| invalid("url"))?;
            let scheme = if url.scheme() == "https" {
                Scheme::Https
            } else {
                Scheme::Http
            };
            let host = url.host_str().ok_or_else(|| invalid("host"))?;
            let authority = match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            let path_with_query = match url.query() {
                Some(query) => format!("{}?{query}", url.path()),
                None => url.path().to_owned(),
            };
            Ok(Target {
                scheme,
                authority,
                path_with_query,
            })
        }
    }

    /// A request that cannot be built: no attempt would change that.
    fn invalid(what: &str) -> AttemptResult {
        AttemptResult::Permanent(format!("invalid request: {what}"))
    }

    fn start(request: &Request, target: &Target) -> Result<FutureIncomingResponse, AttemptResult> {
        let headers = Fields::new();
        for (name, value) in &request.headers {
            headers
                .append(name, value.as_bytes())
                .map_err(|_| invalid(&format!("header {name:?} refused by the HTTP client")))?;
        }
        let outgoing = OutgoingRequest::new(headers);
        outgoing.set_method(&Method::Post).map_err(|_| invalid("method"))?;
        outgoing
            .set_scheme(Some(&target.scheme))
            .map_err(|_| invalid("scheme"))?;
        outgoing
            .set_authority(Some(&target.authority))
            .map_err(|_| invalid("authority"))?;
        outgoing
            .set_path_with_query(Some(&target.path_with_query))
            .map_err(|_| invalid("path"))?;
        let body = outgoing.body().map_err(|_| invalid("body"))?;
        // Hand the request over before writing the body: the host buffers only one chunk.
        let future = outgoing_handler::handle(outgoing, None).map_err(|code| attempt_result(&code, &request.url))?;
        {
            let stream = body.write().map_err(|_| invalid("body stream"))?;
            for chunk in request.body.chunks(WRITE_CHUNK) {
                // A refused or failed request closes the stream; its real outcome is read
                // from the response future below.
                if stream.blocking_write_and_flush(chunk).is_err() {
                    break;
                }
            }
        }
        let _ = OutgoingBody::finish(body, None);
        Ok(future)
    }

    fn finish(future: &FutureIncomingResponse, url: &str) -> AttemptResult {
        match future.get() {
            Some(Ok(Ok(response))) => {
                let status = response.status();
                let headers = response.headers();
                let header = |name: &str| {
                    headers
                        .get(name)
                        .first()
                        .map(|value| String::from_utf8_lossy(value).into_owned())
                };
                // Only a retry waits for it, and a success is never retried.
                let retry_after = if (200..300).contains(&status) {
                    None
                } else {
                    header("retry-after")
                };
                let empty = header("content-length").is_some_and(|length| length.trim() == "0");
                let mut body = Vec::new();
                if !empty
                    && let Ok(incoming) = response.consume()
                    && let Ok(stream) = incoming.stream()
                {
                    // The host has already read the whole (bounded) answer; keep the start.
                    while body.len() < MAX_LOGGED_BODY {
                        match stream.blocking_read((MAX_LOGGED_BODY - body.len()) as u64) {
                            Ok(chunk) if !chunk.is_empty() => body.extend_from_slice(&chunk),
                            _ => break,
                        }
                    }
                }
                AttemptResult::Answered(Answer {
                    status,
                    retry_after,
                    body,
                })
            }
            Some(Ok(Err(code))) => attempt_result(&code, url),
            Some(Err(())) => AttemptResult::Failed("response already taken".into()),
            None => AttemptResult::Failed("response not ready".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::wasi::http::types::{DnsErrorPayload, FieldSizePayload};

    const URL: &str = "https://ingest.example.com:8443/mainflux?x=1";

    #[test]
    fn a_refusal_keeps_the_hosts_explanation() {
        let text = "destination refused: 127.0.0.1 is a loopback address; \
                    set MF_WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS=true to allow it";
        assert_eq!(
            attempt_result(&ErrorCode::InternalError(Some(text.into())), URL),
            AttemptResult::Refused(text.into())
        );
        assert_eq!(
            attempt_result(&ErrorCode::DestinationIpProhibited, URL),
            AttemptResult::Refused("destination refused".into())
        );
        // Another internal error is the host's trouble, not a refusal: retried.
        for other in ["pool exhausted", "destination refusedX", "destination refused"] {
            assert!(matches!(
                attempt_result(&ErrorCode::InternalError(Some(other.into())), URL),
                AttemptResult::Failed(_)
            ));
        }
        assert!(matches!(
            attempt_result(&ErrorCode::InternalError(None), URL),
            AttemptResult::Failed(_)
        ));
    }

    #[test]
    fn an_unresolved_name_is_named() {
        assert_eq!(
            attempt_result(&ErrorCode::DestinationNotFound, URL),
            AttemptResult::Failed("the destination's name ingest.example.com did not resolve".into())
        );
        let payload = DnsErrorPayload {
            rcode: Some("NXDOMAIN".into()),
            info_code: Some(3),
        };
        assert_eq!(
            attempt_result(&ErrorCode::DnsError(payload), URL),
            AttemptResult::Failed(
                "the destination's name ingest.example.com did not resolve (rcode NXDOMAIN, info code 3)".into()
            )
        );
        let bare = DnsErrorPayload {
            rcode: None,
            info_code: None,
        };
        assert_eq!(
            attempt_result(&ErrorCode::DnsError(bare), "http://[::1]/x"),
            AttemptResult::Failed("the destination's name [::1] did not resolve".into())
        );
    }

    #[test]
    fn only_a_request_the_host_finds_malformed_is_permanent() {
        let size = FieldSizePayload {
            field_name: Some("x-big".into()),
            field_size: Some(1 << 20),
        };
        for code in [
            ErrorCode::HttpRequestDenied,
            ErrorCode::HttpRequestMethodInvalid,
            ErrorCode::HttpRequestUriInvalid,
            ErrorCode::HttpRequestUriTooLong,
            ErrorCode::HttpRequestHeaderSize(Some(size)),
            ErrorCode::HttpRequestHeaderSectionSize(Some(9)),
            ErrorCode::HttpRequestBodySize(Some(9)),
        ] {
            assert!(
                matches!(attempt_result(&code, URL), AttemptResult::Permanent(_)),
                "{code:?}"
            );
        }
        for code in [
            ErrorCode::HttpProtocolError,
            ErrorCode::ConnectionRefused,
            ErrorCode::ConnectionTimeout,
            ErrorCode::HttpResponseTimeout,
            ErrorCode::TlsCertificateError,
            ErrorCode::DestinationIpUnroutable,
            ErrorCode::ConfigurationError,
            ErrorCode::HttpResponseIncomplete,
        ] {
            assert!(
                matches!(attempt_result(&code, URL), AttemptResult::Failed(_)),
                "{code:?}"
            );
        }
    }
}
