//! Cross-site request forgery and DNS rebinding.
//!
//! Every form of the dashboard carries a token drawn at start from the
//! system's random source, and every POST must send it back: a page of
//! another site cannot read the dashboard's pages, so it cannot know the
//! token. A POST must also come from the dashboard's own origin when the
//! browser says where it comes from (Origin). And when the dashboard
//! listens on loopback, only requests naming it by a loopback Host are
//! served, so a site whose name was made to resolve to 127.0.0.1 (DNS
//! rebinding) cannot read a page, the token in it, or anything else.

use std::net::SocketAddr;

use axum::http::{header, HeaderMap, StatusCode};

use super::WebError;

pub struct Token(String);

impl Token {
    pub fn new() -> Token {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the system's random source");
        Token(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn value(&self) -> &str {
        &self.0
    }

    /// Accept a POST whose form carried `sent` and whose headers are
    /// `headers`.
    pub fn check(&self, sent: Option<&str>, headers: &HeaderMap) -> Result<(), WebError> {
        let ok = sent.is_some_and(|s| constant_time_eq(s.as_bytes(), self.0.as_bytes()));
        if !ok {
            return Err(WebError::new(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token: reload the page and try again",
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            let same = match (origin.to_str().ok(), host) {
                (Some(o), Some(h)) => o == format!("http://{h}"),
                _ => false,
            };
            if !same {
                return Err(WebError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "this action came from another site's page (Origin {}, Host {}): refused",
                        origin.to_str().unwrap_or("?"),
                        host.unwrap_or("?")
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether to serve a request with these headers on `listen`.
pub fn host_allowed(listen: &SocketAddr, headers: &HeaderMap) -> bool {
    if !listen.ip().is_loopback() {
        // Listening on a public address is the operator's explicit choice
        // (behind a proxy that sets its own Host): not checked here.
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let port = listen.port();
    [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        listen.to_string(),
    ]
    .iter()
    .any(|allowed| allowed == host)
}
