//! What the suite runs on: its own PostgreSQL cluster, a TCP proxy that can
//! cut connections right after a COMMIT, and the worker processes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::{Client, NoTls};

/// The suite's own cluster, so that crashing it disturbs nobody: a folder
/// under target/ and a port of its own, and the proxy's port.
#[derive(Clone)]
pub struct Cluster {
    pub dir: String,
    pub port: u16,
    pub proxy_port: u16,
}

pub const DB: &str = "commitq_faults";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Cluster {
    pub fn run(&self, cmd: &str) {
        let status = Command::new(root().join("dev/cluster.sh"))
            .arg(cmd)
            .env("COMMITQ_PGDIR", &self.dir)
            .env("COMMITQ_PGPORT", self.port.to_string())
            .status()
            .expect("run dev/cluster.sh");
        assert!(status.success(), "dev/cluster.sh {cmd} failed");
    }

    /// Start the cluster; it is stopped when the returned guard is dropped,
    /// also when the run panics.
    pub fn start(&self) -> Running<'_> {
        self.run("start");
        Running(self)
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    pub fn proxied_url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.proxy_port
        )
    }
}

/// The suite's cluster while it runs.
pub struct Running<'a>(&'a Cluster);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = Command::new(root().join("dev/cluster.sh"))
            .arg("stop")
            .env("COMMITQ_PGDIR", &self.0.dir)
            .env("COMMITQ_PGPORT", self.0.port.to_string())
            .status();
    }
}

pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connect, retrying while the server restarts.
pub async fn connect_retrying(url: &str) -> Client {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match connect(url).await {
            Ok(c) => return c,
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot connect to the fault cluster: {e}"),
        }
    }
}

/// A TCP proxy between the workers and PostgreSQL that, when armed, lets a
/// client's COMMIT through and then cuts the connection before the reply
/// comes back: the worker cannot know whether its transaction committed.
/// It also counts the claim and complete_and_take calls the workers send,
/// to show that each path ran.
#[derive(Default)]
pub struct Proxy {
    pub armed: AtomicU64,
    pub cuts: AtomicU64,
    pub claims: AtomicU64,
    pub takes: AtomicU64,
}

impl Proxy {
    pub async fn serve(self: Arc<Self>, listen: u16, server: u16) {
        let listener = TcpListener::bind(("127.0.0.1", listen))
            .await
            .expect("bind proxy port");
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let proxy = self.clone();
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(("127.0.0.1", server)).await {
                    proxy.relay(client, server).await;
                }
            });
        }
    }

    async fn relay(&self, client: TcpStream, server: TcpStream) {
        let (mut client_rx, mut client_tx) = client.into_split();
        let (mut server_rx, mut server_tx) = server.into_split();
        let cut = Arc::new(AtomicBool::new(false));
        let cut_up = cut.clone();
        let up = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if server_tx.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                self.claims
                    .fetch_add(count(&buf[..n], b"commitq.claim("), Ordering::Relaxed);
                self.takes.fetch_add(
                    count(&buf[..n], b"commitq.complete_and_take("),
                    Ordering::Relaxed,
                );
                // A simple-query COMMIT ('Q' message) while armed: it has
                // reached the server; drop the connection before the reply.
                if count(&buf[..n], b"Q\0\0\0\x0bCOMMIT\0") > 0
                    && self
                        .armed
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| a.checked_sub(1))
                        .is_ok()
                {
                    self.cuts.fetch_add(1, Ordering::SeqCst);
                    cut_up.store(true, Ordering::SeqCst);
                    return;
                }
            }
        };
        let down = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match server_rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if cut.load(Ordering::SeqCst) || client_tx.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count() as u64
}

/// The worker processes, killed when the suite ends however it ends.
pub struct Workers {
    pub exe: PathBuf,
    pub url: String,
    pub lease_secs: u64,
    pub children: Vec<Child>,
}

impl Workers {
    pub fn new(url: String, lease_secs: u64) -> Workers {
        Workers {
            exe: std::env::current_exe()
                .unwrap()
                .with_file_name("fault_worker"),
            url,
            lease_secs,
            children: Vec::new(),
        }
    }

    /// Odd workers claim ahead of their handlers (prefetch); worker 0 has
    /// its clock 14 hours ahead.
    pub fn spawn_one(&self, index: usize) -> Child {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["--url", &self.url])
            .args(["--lease-secs", &self.lease_secs.to_string()])
            .args(["--prefetch", if index % 2 == 1 { "8" } else { "0" }])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if index == 0 {
            // Leases are set and expired by the server's clock, so a local
            // clock hours ahead makes no difference.
            cmd.env("TZ", "Etc/GMT-14");
        }
        cmd.spawn().expect("spawn fault_worker")
    }

    pub fn signal(&self, index: usize, signal: &str) {
        let _ = Command::new("kill")
            .args([
                &format!("-{signal}"),
                &self.children[index].id().to_string(),
            ])
            .status();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
