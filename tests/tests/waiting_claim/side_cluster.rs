//! A second cluster of dev/cluster.sh started without the preload line
//! (COMMITQ_PRELOAD=0), in target/<dir>, on a free port; removed when
//! dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SideCluster {
    dir: &'static str,
    port: u16,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cluster_sh(dir: &str, port: u16, args: &[&str]) {
    let out = Command::new(repo_root().join("dev/cluster.sh"))
        .args(args)
        .env("COMMITQ_PGDIR", dir)
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

fn base(dir: &str) -> PathBuf {
    let link = repo_root().join("target").join(dir);
    std::fs::canonicalize(&link).unwrap_or(link)
}

fn remove(dir: &str) {
    if base(dir).join("data/PG_VERSION").exists() {
        cluster_sh(dir, 0, &["stop"]);
    }
    let _ = std::fs::remove_dir_all(base(dir));
    let _ = std::fs::remove_file(repo_root().join("target").join(dir));
}

impl SideCluster {
    pub fn start(dir: &'static str) -> SideCluster {
        remove(dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        cluster_sh(dir, port, &["start"]);
        SideCluster { dir, port }
    }

    /// A new database `name` with pg_commitq, as a connection string.
    pub fn database(&self, name: &str) -> String {
        cluster_sh(self.dir, self.port, &["createdb", name]);
        format!(
            "host={} port={} user=postgres dbname={name}",
            base(self.dir).join("sock").display(),
            self.port
        )
    }
}

impl Drop for SideCluster {
    fn drop(&mut self) {
        remove(self.dir);
    }
}
