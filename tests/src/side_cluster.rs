//! A second cluster of dev/cluster.sh beside the project cluster, in
//! target/<dir>, on a free port, for tests that need what the shared
//! cluster must not do: run without the preload line, change server-wide
//! settings, restart. Removed when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SideCluster {
    dir: &'static str,
    port: u16,
    preload: bool,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cluster_sh(dir: &str, port: u16, preload: bool, args: &[&str]) {
    let out = Command::new(repo_root().join("dev/cluster.sh"))
        .args(args)
        .env("COMMITQ_PGDIR", dir)
        .env("COMMITQ_PGPORT", port.to_string())
        .env("COMMITQ_PRELOAD", if preload { "1" } else { "0" })
        .output()
        .expect("run dev/cluster.sh");
    assert!(
        out.status.success(),
        "dev/cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn base(dir: &str) -> PathBuf {
    let link = repo_root().join("target").join(dir);
    std::fs::canonicalize(&link).unwrap_or(link)
}

fn remove(dir: &str) {
    if base(dir).join("data/PG_VERSION").exists() {
        cluster_sh(dir, 0, false, &["stop"]);
    }
    let _ = std::fs::remove_dir_all(base(dir));
    let _ = std::fs::remove_file(repo_root().join("target").join(dir));
}

impl SideCluster {
    /// A fresh cluster without the preload line (COMMITQ_PRELOAD=0), as a
    /// server where only CREATE EXTENSION was done.
    pub fn start(dir: &'static str) -> SideCluster {
        SideCluster::start_with(dir, false)
    }

    /// A fresh cluster, with the engine's preload line when `preload`.
    pub fn start_with(dir: &'static str, preload: bool) -> SideCluster {
        remove(dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        cluster_sh(dir, port, preload, &["start"]);
        SideCluster { dir, port, preload }
    }

    /// Stop and start the server again (for settings that need a restart).
    pub fn restart(&self) {
        cluster_sh(self.dir, self.port, self.preload, &["stop"]);
        cluster_sh(self.dir, self.port, self.preload, &["start"]);
    }

    /// A new database `name` with pg_commitq, as a connection string.
    pub fn database(&self, name: &str) -> String {
        cluster_sh(self.dir, self.port, self.preload, &["createdb", name]);
        self.url(name)
    }

    /// The connection string of database `name` (postgres exists already).
    pub fn url(&self, name: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={name}",
            base(self.dir).join("sock").display(),
            self.port
        )
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(base(self.dir).join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for SideCluster {
    fn drop(&mut self) {
        remove(self.dir);
    }
}
