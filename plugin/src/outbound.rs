//! Outgoing HTTP as the delivery logic sees it: a batch of requests in, one result per
//! request out, all in flight together.

use crate::delivery::AttemptResult;

/// One delivery attempt's HTTP request: always a POST.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Absolute http or https URL.
    pub url: String,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The exact payload.
    pub body: Vec<u8>,
}

/// Sends a batch of requests concurrently.
pub trait Sender {
    /// Sends every request, all in flight together; answers one result per request, in order.
    fn send_all(&self, requests: &[Request]) -> Vec<AttemptResult>;
}

/// `wasi:http/outgoing-handler` as a [`Sender`].
#[cfg(target_arch = "wasm32")]
pub mod wasi_http {
    use super::{Request, Sender};
    use crate::bindings::wasi::http::outgoing_handler;
    use crate::bindings::wasi::http::types::{
        ErrorCode, Fields, FutureIncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme,
    };
    use crate::bindings::wasi::io::poll;
    use crate::delivery::{Answer, AttemptResult, MAX_LOGGED_BODY};

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
                    results[index] = Some(finish(&future));
                }
            }
            results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| AttemptResult::Failed("no result".into())))
                .collect()
        }
    }

    fn start(request: &Request) -> Result<FutureIncomingResponse, AttemptResult> {
        let invalid = |what: &str| AttemptResult::Failed(format!("invalid request: {what}"));
        let url = url::Url::parse(&request.url).map_err(|_| invalid("url"))?;
        let headers = Fields::new();
        for (name, value) in &request.headers {
            headers
                .append(name, value.as_bytes())
                .map_err(|_| invalid(&format!("header {name}")))?;
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
        let future = outgoing_handler::handle(outgoing, None).map_err(|code| error_result(&code))?;
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

    fn finish(future: &FutureIncomingResponse) -> AttemptResult {
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
            Some(Ok(Err(code))) => error_result(&code),
            Some(Err(())) => AttemptResult::Failed("response already taken".into()),
            None => AttemptResult::Failed("response not ready".into()),
        }
    }

    fn error_result(code: &ErrorCode) -> AttemptResult {
        match code {
            ErrorCode::DestinationIpProhibited => AttemptResult::Refused,
            ErrorCode::ConnectionRefused => AttemptResult::Failed("connection refused".into()),
            ErrorCode::ConnectionTimeout => AttemptResult::Failed("connection timed out".into()),
            ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
                AttemptResult::Failed("timed out waiting for the response".into())
            }
            ErrorCode::ConnectionTerminated => AttemptResult::Failed("connection closed by the receiver".into()),
            ErrorCode::DnsError(_) | ErrorCode::DestinationNotFound => {
                AttemptResult::Failed("the destination's name did not resolve".into())
            }
            ErrorCode::TlsCertificateError | ErrorCode::TlsProtocolError | ErrorCode::TlsAlertReceived(_) => {
                AttemptResult::Failed("TLS handshake failed".into())
            }
            other => AttemptResult::Failed(format!("request failed: {other:?}")),
        }
    }
}
