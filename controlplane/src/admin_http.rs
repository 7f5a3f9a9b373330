//! The admin HTTP listener: its own thread running hyper's HTTP/1 server on a one-thread tokio
//! runtime, so no client can make the control loop wait. This module owns the transport and its
//! limits (header size and read time, body size and read time, concurrent connections, idle
//! keep-alive, connection lifetime), the optional bearer token, and the hand-off: each complete,
//! authorised request goes to the control thread over a bounded channel with a one-shot reply
//! channel, and the control thread answers it between its other duties (runtime.rs builds every
//! answer). A control thread that does not answer in time gets the client a 503, never a hang.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, Semaphore};

use crate::config::Secret;

/// What one admin connection may cost. The defaults fit an operator's curl and a metrics scraper
/// with a wide margin, and cap what a hostile client can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminLimits {
    /// Request line plus headers; more gets 431 and the connection closed.
    pub max_header_bytes: usize,
    /// To receive the whole head of a request, and how long an idle keep-alive connection stays.
    pub header_read_timeout: Duration,
    /// A declared or streamed body larger than this gets 413 without being read.
    pub max_body_bytes: usize,
    /// To receive the whole body once the head is in; longer gets 408.
    pub body_read_timeout: Duration,
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Requests waiting for the control thread; one more gets 503 at once.
    pub queue: usize,
    /// How long a request waits for the control thread's answer before 503.
    pub reply_timeout: Duration,
    /// After this a connection finishes its request in hand and closes, so a client that never
    /// reads its responses cannot keep a connection slot.
    pub connection_lifetime: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_header_bytes: 8 * 1024,
            header_read_timeout: Duration::from_secs(5),
            max_body_bytes: 64 * 1024,
            body_read_timeout: Duration::from_secs(5),
            max_connections: 64,
            queue: 32,
            reply_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(60),
        }
    }
}

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot bind the admin listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the admin listener's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot start the admin listener's thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The methods the admin API distinguishes; anything else is answered 404 like an unknown path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminMethod {
    Get,
    Post,
    Other,
}

/// An answer built by the control thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl AdminResponse {
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        AdminResponse { status, content_type: "application/json", body: body.into() }
    }
}

/// One complete, authorised request waiting for the control thread.
#[derive(Debug)]
pub struct AdminRequest {
    pub method: AdminMethod,
    /// Without the query string.
    pub path: String,
    /// The body as UTF-8 (empty for GET).
    pub body: String,
    reply: oneshot::Sender<AdminResponse>,
}

impl AdminRequest {
    /// Sends the answer; a client that has gone (or timed out) just does not get it.
    pub fn respond(self, response: AdminResponse) {
        let _ = self.reply.send(response);
    }
}

/// The running admin listener. Dropping it stops the thread.
pub struct AdminServer {
    local_addr: SocketAddr,
    requests: Receiver<AdminRequest>,
    token: Arc<ArcSwapOption<Secret>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` here, so a bind error reaches the caller, then serves on a new thread.
    pub fn start(addr: SocketAddr, token: Option<Secret>, limits: AdminLimits) -> Result<AdminServer, AdminError> {
        let listener = std::net::TcpListener::bind(addr).map_err(|source| AdminError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| AdminError::Bind { addr, source })?;
        listener.set_nonblocking(true).map_err(|source| AdminError::Bind { addr, source })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(AdminError::Runtime)?;
        let (tx, requests) = channel::bounded(limits.queue.max(1));
        let token = Arc::new(ArcSwapOption::from(token.map(Arc::new)));
        let (shutdown, stop) = oneshot::channel();
        let shared = Arc::new(Shared { limits, token: token.clone(), requests: tx });
        let thread = std::thread::Builder::new()
            .name("fsroute-admin".into())
            .spawn(move || runtime.block_on(accept_loop(listener, shared, stop)))
            .map_err(AdminError::Thread)?;
        Ok(AdminServer { local_addr, requests, token, shutdown: Some(shutdown), thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many requests may wait at once: the most one control-loop turn needs to take.
    pub fn queue_capacity(&self) -> usize {
        self.requests.capacity().unwrap_or(1)
    }

    /// The next request waiting for an answer, without waiting.
    pub fn try_next(&self) -> Option<AdminRequest> {
        self.requests.try_recv().ok()
    }

    /// Replaces the token requests must carry (a reload); `None` lets every request in.
    pub fn set_token(&self, token: Option<Secret>) {
        self.token.store(token.map(Arc::new));
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What every connection task reads.
struct Shared {
    limits: AdminLimits,
    token: Arc<ArcSwapOption<Secret>>,
    requests: Sender<AdminRequest>,
}

async fn accept_loop(listener: std::net::TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener unusable; the admin API is off");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: pause instead of spinning on the error.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin connection refused: all connection slots are in use");
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_connection(stream, shared).await;
            drop(slot);
        });
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let limits = &shared.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        // hyper's floor for its read buffer; bodies stream through it in pieces.
        .max_buf_size(limits.max_header_bytes.max(8192) * 2);
    let svc_shared = shared.clone();
    let svc = service_fn(move |req| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(handle(req, &shared).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = tokio::time::sleep(limits.connection_lifetime) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.reply_timeout, conn).await;
        }
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A refusal after which the rest of the request is not read, so the connection cannot be reused.
fn reply_and_close(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = reply(status, body);
    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let limits = &shared.limits;
    if let Some(token) = shared.token.load_full() {
        if !authorised(&req, &token) {
            let mut r = reply_and_close(StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#);
            r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let method = match *req.method() {
        hyper::Method::GET => AdminMethod::Get,
        hyper::Method::POST => AdminMethod::Post,
        _ => AdminMethod::Other,
    };
    let too_large = format!(r#"{{"error":"request body too large ({} bytes at most)"}}"#, limits.max_body_bytes);
    // Judged on the declared length before a byte of the body is read.
    if req.body().size_hint().lower() > limits.max_body_bytes as u64 {
        return reply_and_close(StatusCode::PAYLOAD_TOO_LARGE, &too_large);
    }
    let path = req.uri().path().to_string();
    let body = if method == AdminMethod::Get {
        // No admin GET takes a body: it is left unread and the connection closes after the answer.
        String::new()
    } else {
        let limited = Limited::new(req.into_body(), limits.max_body_bytes);
        match tokio::time::timeout(limits.body_read_timeout, limited.collect()).await {
            Err(_) => {
                return reply_and_close(StatusCode::REQUEST_TIMEOUT, r#"{"error":"request body not received in time"}"#)
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return reply_and_close(StatusCode::PAYLOAD_TOO_LARGE, &too_large)
            }
            Ok(Err(_)) => return reply_and_close(StatusCode::BAD_REQUEST, r#"{"error":"unreadable body"}"#),
            Ok(Ok(collected)) => match String::from_utf8(collected.to_bytes().to_vec()) {
                Ok(s) => s,
                Err(_) => return reply(StatusCode::BAD_REQUEST, r#"{"error":"unreadable body"}"#),
            },
        }
    };
    let (tx, rx) = oneshot::channel();
    let busy = r#"{"error":"control plane busy, try again"}"#;
    match shared.requests.try_send(AdminRequest { method, path, body, reply: tx }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            return reply(StatusCode::SERVICE_UNAVAILABLE, busy);
        }
    }
    match tokio::time::timeout(limits.reply_timeout, rx).await {
        Ok(Ok(answer)) => {
            let mut r = Response::new(Full::new(Bytes::from(answer.body)));
            *r.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
            r
        }
        Ok(Err(_)) | Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, busy),
    }
}

/// `Authorization: Bearer <token>` (scheme in any case, RFC 7235) matching the configured token.
fn authorised(req: &Request<Incoming>, token: &Secret) -> bool {
    let Some(value) = req.headers().get(AUTHORIZATION) else { return false };
    let value = value.as_bytes();
    let Some((scheme, presented)) = value.split_at_checked(6) else { return false };
    if !scheme.eq_ignore_ascii_case(b"bearer") || presented.first() != Some(&b' ') {
        return false;
    }
    let presented = presented.trim_ascii();
    constant_time_eq(presented, token.expose().as_bytes())
}

/// Compares without stopping at the first differing byte, so response time tells nothing about
/// how much of a guess was right. Only the (public) length of the guess shapes the time.
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, &b) in presented.iter().enumerate() {
        let e = expected.get(i % expected.len().max(1)).copied().unwrap_or(0);
        diff |= b ^ e;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    use super::*;

    fn quick_limits() -> AdminLimits {
        AdminLimits {
            body_read_timeout: Duration::from_millis(300),
            reply_timeout: Duration::from_millis(300),
            queue: 1,
            ..AdminLimits::default()
        }
    }

    fn start(token: Option<&str>) -> AdminServer {
        AdminServer::start("127.0.0.1:0".parse().unwrap(), token.map(Secret::new), quick_limits()).expect("start")
    }

    /// One request as written; the status code and the whole answer.
    fn exchange(server: &AdminServer, request: &str) -> (u16, String) {
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        (out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), out)
    }

    /// Answers every request with its method, path and body, as the control thread would.
    fn echo_until_dropped(server: Arc<AdminServer>, stop: Arc<std::sync::atomic::AtomicBool>) -> JoinHandle<()> {
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                while let Some(req) = server.try_next() {
                    let body = format!("{:?} {} {}", req.method, req.path, req.body);
                    req.respond(AdminResponse { status: 201, content_type: "text/plain", body });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    }

    #[test]
    fn a_complete_request_reaches_the_control_side_and_its_answer_comes_back() {
        let server = Arc::new(start(None));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let echo = echo_until_dropped(server.clone(), stop.clone());
        let (code, out) = exchange(&server, "POST /dispatcher/state?x=1 HTTP/1.0\r\nContent-Length: 4\r\n\r\nabcd");
        assert_eq!(code, 201, "{out}");
        assert!(out.contains("content-type: text/plain") && out.ends_with("Post /dispatcher/state abcd"), "{out}");
        let (code, out) = exchange(&server, "DELETE /status HTTP/1.0\r\n\r\n");
        assert!(code == 201 && out.ends_with("Other /status "), "{out}");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        echo.join().unwrap();
    }

    #[test]
    fn a_control_side_that_does_not_answer_gets_the_client_a_503_in_bounded_time() {
        let server = start(None);
        let t = Instant::now();
        let (code, out) = exchange(&server, "GET /status HTTP/1.0\r\n\r\n");
        assert_eq!(code, 503, "{out}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // The queue (1) now holds that request; the next one is refused at once.
        let t = Instant::now();
        assert_eq!(exchange(&server, "GET /status HTTP/1.0\r\n\r\n").0, 503);
        assert!(t.elapsed() < Duration::from_millis(250), "{:?}", t.elapsed());
        assert!(server.try_next().is_some());
    }

    #[test]
    fn bodies_are_bounded_in_size_and_time_and_must_be_utf8() {
        let server = start(None);
        let (code, out) = exchange(&server, "POST /x HTTP/1.1\r\nContent-Length: 65537\r\n\r\n");
        assert!(code == 413 && out.contains("connection: close"), "{out}");
        let t = Instant::now();
        let (code, out) = exchange(&server, "POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
        assert_eq!(code, 408, "{out}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\n\xff\xfe").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.0 400") && out.ends_with(r#"{"error":"unreadable body"}"#), "{out}");
        assert!(server.try_next().is_none(), "refused requests must not reach the control side");
    }

    #[test]
    fn the_token_is_checked_before_anything_else_and_can_be_replaced() {
        let server = start(Some("0123456789abcdef"));
        for auth in ["", "Authorization: Bearer 0123456789abcdeX\r\n", "Authorization: Bearer0123456789abcdef\r\n"] {
            let (code, out) = exchange(&server, &format!("POST /x HTTP/1.0\r\n{auth}Content-Length: 99999999\r\n\r\n"));
            assert!(code == 401 && out.contains("www-authenticate: Bearer"), "{auth:?}: {out}");
        }
        assert!(server.try_next().is_none());
        let (code, _) = exchange(&server, "GET /status HTTP/1.0\r\nAuthorization: BEARER 0123456789abcdef\r\n\r\n");
        assert_eq!(code, 503, "past the token check, no control side answers");
        assert!(server.try_next().is_some());
        server.set_token(Some(Secret::new("fedcba9876543210")));
        let (code, _) = exchange(&server, "GET /status HTTP/1.0\r\nAuthorization: Bearer 0123456789abcdef\r\n\r\n");
        assert_eq!(code, 401);
        server.set_token(None);
        assert_eq!(exchange(&server, "GET /status HTTP/1.0\r\n\r\n").0, 503);
    }

    #[test]
    fn constant_time_eq_matches_only_the_same_bytes() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef0", b"0123456789abcdef"));
        // A guess that repeats the token must not pass through the modulo.
        assert!(!constant_time_eq(b"abab", b"ab"));
        assert!(!constant_time_eq(b"", b"ab"));
        assert!(!constant_time_eq(b"x", b""));
    }
}
