//! TLS: every connection the client opens (its pool's and the worker
//! pool's LISTEN connection) honours libpq's `sslmode` and `sslrootcert`.
//!
//! Against a cluster of this file's own (target/pg-tls, started through
//! dev/cluster.sh on a free port) with `ssl = on`, a certificate for
//! "localhost" and 127.0.0.1 signed by a CA made here, and a pg_hba.conf
//! that rejects TCP without TLS, so any connection opened without TLS
//! fails; and against the project cluster, which has ssl off. The tests
//! share the TLS cluster while any of them runs; the last one out stops it
//! and deletes it (a run that was killed leaves one, which the next run
//! removes first).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use commitq::{Client, Error, Outcome, WorkerPool};
use commitq_tests::{cluster_url, record, scalar, start_pool, wait_until, waiting_on, Record};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The folder under target/ that dev/cluster.sh keeps this cluster in.
const PGDIR: &str = "pg-tls";

/// The database the tests use on the TLS cluster, with pg_commitq.
const DB: &str = "tls";

/// The TLS cluster, while a test holds it.
struct TlsCluster {
    port: u16,
    /// The CA that signed the server's certificate (PEM).
    ca: PathBuf,
    /// Another CA, which signed nothing the server has.
    other_ca: PathBuf,
    /// The Unix socket folder (no TLS there: for setting up only).
    socket: PathBuf,
}

static CLUSTER: Mutex<Weak<TlsCluster>> = Mutex::new(Weak::new());

/// The running TLS cluster, started if no test holds it.
fn tls_cluster() -> Arc<TlsCluster> {
    let mut slot = CLUSTER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(cluster) = slot.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(TlsCluster::start());
    *slot = Arc::downgrade(&cluster);
    cluster
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// dev/cluster.sh on this file's cluster. Without the preload line: there
/// the worker pool cannot wait in claim_wait and opens the LISTEN
/// connection whose TLS these tests check.
fn cluster_sh(args: &[&str], port: u16) {
    let out = Command::new(repo_root().join("dev/cluster.sh"))
        .args(args)
        .env("COMMITQ_PGDIR", PGDIR)
        .env("COMMITQ_PGPORT", port.to_string())
        .env("COMMITQ_PRELOAD", "0")
        .output()
        .expect("run dev/cluster.sh");
    assert!(
        out.status.success(),
        "dev/cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where dev/cluster.sh keeps the cluster: target/pg-tls, or the folder in
/// /tmp it links to there.
fn cluster_base() -> PathBuf {
    let link = repo_root().join("target").join(PGDIR);
    std::fs::canonicalize(&link).unwrap_or(link)
}

/// Stop the cluster if it runs (a killed run's, say) and delete it.
fn remove_cluster() {
    let base = cluster_base();
    if base.join("data/PG_VERSION").exists() {
        cluster_sh(&["stop"], 0);
    }
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_file(repo_root().join("target").join(PGDIR));
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

impl TlsCluster {
    fn start() -> TlsCluster {
        remove_cluster();
        let port = free_port();
        // Created, then stopped to be given its certificate and settings.
        cluster_sh(&["start"], port);
        cluster_sh(&["stop"], port);
        let base = cluster_base();
        let data = base.join("data");

        let ca = make_ca("commitq test CA");
        let other_ca = make_ca("commitq other CA");
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server certificate names");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).expect("server certificate");

        // The server's files belong to its user (the data folder's owner),
        // and PostgreSQL refuses a key that others can read.
        let server_file = |name: &str, contents: &str| {
            let path = data.join(name);
            std::fs::write(&path, contents).unwrap();
            chown_like(&path, &data);
            chmod(&path, 0o600);
        };
        server_file("server.crt", &cert.pem());
        server_file("server.key", &key.serialize_pem());
        append(
            &data.join("postgresql.conf"),
            "\n# tests/tests/tls.rs\nssl = on\nssl_cert_file = 'server.crt'\n\
             ssl_key_file = 'server.key'\n\
             listen_addresses = '127.0.0.1, 127.0.0.2'\n\
             shared_buffers = 32MB\nmax_connections = 50\n",
        );
        // TCP without TLS is turned away; the Unix socket stays open.
        let hba = data.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("hostnossl all all all reject\n{rules}")).unwrap();

        // The CAs the client is given, where the tests' user can read them.
        let certs = base.join("client");
        std::fs::create_dir_all(&certs).unwrap();
        let ca_file = certs.join("ca.pem");
        let other_ca_file = certs.join("other-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(&other_ca_file, other_ca.pem()).unwrap();

        cluster_sh(&["start"], port);
        cluster_sh(&["createdb", DB], port);
        TlsCluster {
            port,
            ca: ca_file,
            other_ca: other_ca_file,
            socket: base.join("sock"),
        }
    }

    /// A key=value connection string for the test database over TCP.
    fn url(&self, settings: &str) -> String {
        format!("port={} user=postgres dbname={DB} {settings}", self.port)
    }

    /// `sslrootcert=` the CA that signed the server's certificate.
    fn right_ca(&self) -> String {
        format!("sslrootcert='{}'", self.ca.display())
    }

    fn wrong_ca(&self) -> String {
        format!("sslrootcert='{}'", self.other_ca.display())
    }

    /// The test database over the Unix socket, where TLS plays no part.
    fn socket_url(&self) -> String {
        let socket = self.socket.display();
        format!("host={socket} port={} user=postgres dbname={DB}", self.port)
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let slot = CLUSTER.lock().unwrap_or_else(PoisonError::into_inner);
        // A test that came in after the last one left started a new
        // cluster in the same place (removing this one first): leave it.
        if slot.upgrade().is_none() {
            remove_cluster();
        }
    }
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).expect("CA certificate")
}

fn chown_like(path: &Path, like: &Path) {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(like).unwrap();
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid())).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Whether the connection a pooled client hands out is encrypted, as the
/// server sees it.
async fn encrypted(client: &Client) -> bool {
    let conn = client.pool().get().await.expect("a pooled connection");
    let sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    conn.query_one(sql, &[]).await.unwrap().get(0)
}

/// Connect, and say how the connection is: encrypted or not.
async fn connects(url: &str) -> bool {
    match Client::connect(url).await {
        Ok(client) => encrypted(&client).await,
        Err(e) => panic!("{url}: refused: {}", with_causes(&e)),
    }
}

/// Connect where the connection must be refused; the refusal's message.
async fn refused(url: &str) -> String {
    match Client::connect(url).await {
        Ok(_) => panic!("{url}: connected, should have been refused"),
        Err(e) => with_causes(&e),
    }
}

/// An error's message and those of its causes (tokio-postgres keeps the
/// TLS library's reason in the cause).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        message = format!("{message}: {c}");
        cause = c.source();
    }
    message
}

#[tokio::test]
async fn require_and_prefer_encrypt_without_checking_the_certificate() {
    let c = tls_cluster();
    // The server's CA is known to nobody here: require and prefer
    // (the default) encrypt all the same, as libpq's do.
    assert!(connects(&c.url("host=127.0.0.1 sslmode=require")).await);
    assert!(connects(&c.url("host=localhost")).await);
    assert!(connects(&c.url("host=127.0.0.2 sslmode=prefer")).await);
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{DB}?sslmode=require",
        c.port
    );
    assert!(connects(&url).await);
    // sslmode disable is refused by this server, which wants TLS on TCP.
    let no_tls = refused(&c.url("host=127.0.0.1 sslmode=disable")).await;
    assert!(no_tls.contains("no encryption"), "{no_tls}");
    // On the Unix socket sslmode is ignored, as libpq does.
    let socket = format!("{} sslmode=require", c.socket_url());
    assert!(!connects(&socket).await);
}

#[tokio::test]
async fn verify_full_accepts_the_certificates_host_and_refuses_another() {
    let c = tls_cluster();
    let full = format!("sslmode=verify-full {}", c.right_ca());
    assert!(connects(&c.url(&format!("host=localhost {full}"))).await);
    assert!(connects(&c.url(&format!("host=127.0.0.1 {full}"))).await);
    let ca = c.ca.display().to_string().replace('/', "%2F");
    let url = format!(
        "postgresql://postgres@localhost:{}/{DB}?sslmode=verify-full&sslrootcert={ca}",
        c.port
    );
    assert!(connects(&url).await);

    // The same server, reached by an address or a name not in its
    // certificate.
    for host in [
        "host=127.0.0.2",
        "host=db.example.invalid hostaddr=127.0.0.1",
    ] {
        let e = refused(&c.url(&format!("{host} {full}"))).await;
        assert!(e.contains("not valid for name"), "{host}: {e}");
    }
    // And with a CA that did not sign its certificate.
    let e = refused(&c.url(&format!(
        "host=localhost sslmode=verify-full {}",
        c.wrong_ca()
    )))
    .await;
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[tokio::test]
async fn verify_ca_checks_the_chain_and_not_the_host() {
    let c = tls_cluster();
    let right = format!("sslmode=verify-ca {}", c.right_ca());
    for host in [
        "host=localhost",
        "host=127.0.0.2",
        "host=db.example.invalid hostaddr=127.0.0.1",
    ] {
        assert!(connects(&c.url(&format!("{host} {right}"))).await, "{host}");
    }
    let e = refused(&c.url(&format!(
        "host=localhost sslmode=verify-ca {}",
        c.wrong_ca()
    )))
    .await;
    assert!(e.contains("UnknownIssuer"), "{e}");
    // require with a root certificate checks the chain too, as libpq's does.
    let e = refused(&c.url(&format!("host=localhost sslmode=require {}", c.wrong_ca()))).await;
    assert!(e.contains("UnknownIssuer"), "{e}");
    assert!(connects(&c.url(&format!("host=localhost sslmode=require {}", c.right_ca()))).await);
}

#[tokio::test]
async fn bad_settings_are_typed_errors_before_any_connection() {
    // Port 1: nothing listens there, and nothing is tried.
    let bad_mode = Client::connect("host=localhost port=1 sslmode=verify").await;
    assert!(
        matches!(bad_mode, Err(Error::SslMode(_))),
        "{:?}",
        bad_mode.err()
    );
    let missing = "host=localhost port=1 sslmode=verify-ca sslrootcert=/nonexistent/ca.pem";
    let missing = Client::connect(missing).await;
    assert!(
        matches!(&missing, Err(Error::SslRootCert { path, .. }) if path == "/nonexistent/ca.pem"),
        "{:?}",
        missing.err()
    );
}

/// The project cluster has ssl off: require is refused there, and the same
/// connection string without it connects (so TLS is what was refused).
#[tokio::test]
async fn a_server_without_tls_is_refused_under_require() {
    let db = commitq_tests::TestDb::new("t_tls_plain").await;
    let port = cluster_url()
        .split_whitespace()
        .find_map(|p| p.strip_prefix("port="))
        .expect("a port in COMMITQ_DATABASE_URL")
        .to_string();
    let tcp = format!(
        "host=127.0.0.1 port={port} user=postgres dbname={}",
        db.name
    );
    // verify-ca and verify-full need a root certificate to be named before
    // they connect; any will do against a server that offers no TLS.
    let ca = repo_root().join("target/tls-plain-ca.pem");
    std::fs::write(&ca, make_ca("commitq test CA").pem()).unwrap();
    let mut refusals = vec![];
    for mode in ["require", "verify-ca", "verify-full"] {
        let url = format!("{tcp} sslmode={mode} sslrootcert='{}'", ca.display());
        refusals.push((mode, Client::connect(&url).await.err()));
    }
    std::fs::remove_file(&ca).unwrap();
    for (mode, refusal) in refusals {
        let e = refusal.map(|e| with_causes(&e));
        let e = e.unwrap_or_else(|| panic!("{mode}: connected, should have been refused"));
        assert!(e.contains("server does not support TLS"), "{mode}: {e}");
    }
    assert!(!connects(&format!("{tcp} sslmode=prefer")).await);
    assert!(!connects(&format!("{tcp} sslmode=disable")).await);
}

/// The worker pool over TLS: its LISTEN connection is encrypted with the
/// settings of the URL the client was made from, or of `with_listen_url`,
/// and its NOTIFY wakes a worker that would otherwise sleep for an hour.
#[tokio::test]
async fn a_worker_pool_over_tls_runs_a_job_woken_through_listen() {
    let c = tls_cluster();
    let tls_url = c.url(&format!(
        "host=localhost sslmode=verify-full {}",
        c.right_ca()
    ));

    let client = Client::connect(&tls_url).await.expect("client over TLS");
    assert!(encrypted(&client).await);
    run_one_job_woken_through_listen(&client, 1, "over the client's URL").await;

    // A pool of the socket, and the LISTEN connection's own URL.
    let client = Client::connect(&c.socket_url())
        .await
        .expect("client on the socket")
        .with_listen_url(tls_url);
    assert!(!encrypted(&client).await);
    run_one_job_woken_through_listen(&client, 2, "over with_listen_url").await;
}

async fn run_one_job_woken_through_listen(client: &Client, n: i64, how: &str) {
    let (ran, mut runs) = tokio::sync::mpsc::unbounded_channel();
    let pool = WorkerPool::builder(client.clone())
        .queue(<Record as commitq::Job>::QUEUE, 1)
        .poll_interval(Duration::from_secs(3600))
        .maintain_interval(None)
        .handle(move |_ctx, job: Record| {
            let ran = ran.clone();
            async move {
                let _ = ran.send(job.n);
                Ok(Outcome::Complete)
            }
        })
        .build();
    let running = start_pool(pool);

    let listening = "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
        WHERE a.datname = current_database() AND a.query LIKE 'LISTEN %' AND s.ssl
          AND a.client_addr IS NOT NULL";
    let what = format!("an encrypted LISTEN connection ({how})");
    wait_until(&what, Duration::from_secs(20), async || {
        scalar(client, listening).await == 1
    })
    .await;
    // The worker has found the queue empty and sleeps until woken.
    let what = format!("the worker waiting on its queue ({how})");
    wait_until(&what, Duration::from_secs(20), async || {
        waiting_on(client, <Record as commitq::Job>::QUEUE).await == 1
    })
    .await;

    client.enqueue(&record(n, how)).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(20), runs.recv()).await;
    assert_eq!(woke.ok().flatten(), Some(n), "the job ran ({how})");
    running.stop().await;
    // Completed: gone from the live jobs (completed jobs are not kept).
    let live = format!("SELECT count(*) FROM commitq.jobs WHERE args->>'n' = '{n}'");
    assert_eq!(scalar(client, &live).await, 0, "the job completed ({how})");
    // The LISTEN connection closes with its pool.
    let what = format!("the LISTEN connection closed ({how})");
    wait_until(&what, Duration::from_secs(20), async || {
        scalar(client, listening).await == 0
    })
    .await;
}
