//! What the command line's tests share: a database of the test's own, the
//! real `commitq` binary run against it, a running `commitq web`, a plain
//! HTTP client for it, and jobs put into each state by the real SQL calls.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub use commitq_tests::TestDb;

pub const BIN: &str = env!("CARGO_BIN_EXE_commitq");

/// A database of the test's own with commitq installed.
pub async fn db(name: &str) -> TestDb {
    TestDb::new(name).await
}

/// A login role of the test's own, member of `grant` (a commitq role).
pub async fn login_role(db: &TestDb, name: &str, grant: &str) -> String {
    let c = db.connect().await;
    c.batch_execute(&format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN
             CREATE ROLE {name} LOGIN;
           END IF;
         END $$;
         GRANT {grant} TO {name};"
    ))
    .await
    .unwrap();
    db.url_as(name)
}

/// Run `commitq ARGS --url URL`, with `stdin` as its standard input.
pub fn run(url: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--url")
        .arg(url)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run commitq");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run it and require exit code `code`; returns stdout.
pub fn run_ok(url: &str, args: &[&str], code: i32) -> String {
    let o = run(url, args, "");
    assert_eq!(
        o.status.code(),
        Some(code),
        "commitq {args:?}: stdout {} stderr {}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

pub async fn enqueue(db: &tokio_postgres::Client, queue: &str, kind: &str, args: &str) -> i64 {
    db.query_one(
        "SELECT job_id FROM commitq.enqueue($1, $2, $3::text::jsonb, max_attempts => 1)",
        &[&queue, &kind, &args],
    )
    .await
    .unwrap()
    .get(0)
}

/// Claim the next job of `queue` and fail it with `error`: with
/// max_attempts 1 it is discarded. Returns its id.
pub async fn claim_and_fail(db: &tokio_postgres::Client, queue: &str, error: &str) -> i64 {
    let r = db
        .query_one(
            "SELECT job_id, lease_token FROM commitq.claim($1, 'test-worker', 1, '1 minute')",
            &[&queue],
        )
        .await
        .unwrap();
    let (id, token): (i64, i64) = (r.get(0), r.get(1));
    db.execute("SELECT commitq.fail($1, $2, $3)", &[&id, &token, &error])
        .await
        .unwrap();
    id
}

pub async fn job_state(db: &tokio_postgres::Client, id: i64) -> String {
    db.query_one(
        "SELECT state::text FROM commitq.job_list WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap()
    .get(0)
}

/// A running `commitq web` on a port the system chose; killed when dropped.
pub struct Web {
    child: Child,
    pub addr: String,
}

impl Web {
    pub fn start(url: &str) -> Web {
        let mut child = Command::new(BIN)
            .args(["web", "--listen", "127.0.0.1:0", "--url", url])
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start commitq web");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_else(|| panic!("commitq web said {line:?}"))
            .to_string();
        Web { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str) -> Response {
        http(&self.addr, "GET", path, &[], "")
    }

    /// POST a form, with these extra headers.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], form: &str) -> Response {
        http(&self.addr, "POST", path, headers, form)
    }

    /// The CSRF token the pages carry.
    pub fn csrf(&self) -> String {
        let body = self.get("/").body;
        token_in(&body).expect("a CSRF token in the page")
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn token_in(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" content=\"")? + "name=\"csrf\" content=\"".len();
    Some(html[at..].chars().take_while(|c| *c != '"').collect())
}

pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 request on its own connection, as a browser would send it
/// (Host header included unless `headers` names one).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Response {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    }
}
