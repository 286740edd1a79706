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
    use crate::bindings::wasi::io::poll;
    use crate::ports::{Answer, AttemptResult, MAX_LOGGED_BODY, Request, Sender};

    /// Largest write `blocking-write-and-flush` accepts.
    const WRITE_CHUNK: usize = 4096;

    /// The host's outgoing HTTP.
    pub struct WasiHttp;

    impl Sender for WasiHttp {
        fn send_all(&self, requests: &[Request]) -> Vec<AttemptResult> {
            let mut results: Vec<Option<AttemptResult>> = vec![None; requests.len()];
            let mut in_flight: Vec<(usize, FutureIncomingResponse)> = Vec::with_capacity(requests.len());
            for (index, request) in requests.iter().enumerate() {
                match start(request) {
                    Ok(future) => in_flight.push((index, future)),
                    Err(result) => results[index] = Some(result),
                }
            }
            // Subscribe to each response once, then poll the whole set until every one is in.
            let mut pollables: Vec<_> = in_flight.iter().map(|(_, future)| future.subscribe()).collect();
            while !in_flight.is_empty() {
                let ready = {
                    let borrowed: Vec<&poll::Pollable> = pollables.iter().collect();
                    poll::poll(&borrowed)
                };
                let mut ready: Vec<usize> = ready.into_iter().map(|i| i as usize).collect();
                ready.sort_unstable_by(|a, b| b.cmp(a));
                for position in ready {
                    let (index, future) = in_flight.swap_remove(position);
                    drop(pollables.swap_remove(position));
                    results[index] = Some(finish(&future, &requests[index].url));
                }
            }
            results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| AttemptResult::Failed("no result".into())))
                .collect()
        }
    }

    fn start(request: &Request) -> Result<FutureIncomingResponse, AttemptResult> {
        // Built from the stored webhook alone, so the next attempt would fail the same way.
        let invalid = |what: &str| AttemptResult::Permanent(format!("invalid request: {what}"));
        let url = url::Url::parse(&request.url).map_err(|_| invalid("url"))?;
        let headers = Fields::new();
        for (name, value) in &request.headers {
            headers
                .append(name, value.as_bytes())
                .map_err(|_| invalid(&format!("header {name:?} refused by the HTTP client")))?;
        }
        let outgoing = OutgoingRequest::new(headers);
        outgoing.set_method(&Method::Post).map_err(|_| invalid("method"))?;
        let scheme = if url.scheme() == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        };
        outgoing.set_scheme(Some(&scheme)).map_err(|_| invalid("scheme"))?;
        let host = url.host_str().ok_or_else(|| invalid("host"))?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        outgoing
            .set_authority(Some(&authority))
            .map_err(|_| invalid("authority"))?;
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        outgoing.set_path_with_query(Some(&path)).map_err(|_| invalid("path"))?;
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
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .first()
                    .map(|value| String::from_utf8_lossy(value).into_owned());
                let mut body = Vec::new();
                if let Ok(incoming) = response.consume()
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
                    status: response.status(),
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
