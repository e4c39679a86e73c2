//! A real PgBouncer (Debian's /usr/sbin/pgbouncer) in transaction pooling
//! mode in front of the project cluster, for one test: started on a free
//! port, trust authentication for user postgres, stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct PgBouncer {
    port: u16,
    child: Child,
    dir: PathBuf,
}

/// `host=` and `port=` of a key=value connection string.
fn setting(url: &str, key: &str) -> String {
    url.split_whitespace()
        .find_map(|p| p.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {url}"))
        .to_string()
}

impl PgBouncer {
    /// In front of `cluster_url`'s server, serving database `db`.
    pub fn start(cluster_url: &str, db: &str) -> PgBouncer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("commitq-pgbouncer-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (host, server_port) = (setting(cluster_url, "host"), setting(cluster_url, "port"));
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        let ini = format!(
            "[databases]\n{db} = host={host} port={server_port} dbname={db}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir =\nauth_type = trust\nauth_file = {users}\n\
             pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 50\n\
             logfile = {log}\npidfile = {pid}\nadmin_users = postgres\n",
            users = dir.join("users.txt").display(),
            log = dir.join("pgbouncer.log").display(),
            pid = dir.join("pgbouncer.pid").display(),
        );
        let ini_path = dir.join("pgbouncer.ini");
        std::fs::write(&ini_path, ini).unwrap();
        // PgBouncer refuses to run as root: as the server's user then.
        let root = unsafe { libc_getuid() } == 0;
        if root {
            Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(&dir)
                .status()
                .unwrap();
        }
        let mut cmd = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "/usr/sbin/pgbouncer"]);
            c
        } else {
            Command::new("/usr/sbin/pgbouncer")
        };
        let child = cmd
            .arg(&ini_path)
            .spawn()
            .expect("start /usr/sbin/pgbouncer");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "pgbouncer did not listen on {port}: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PgBouncer { port, child, dir }
    }

    /// Database `db` through the bouncer.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // runuser passes the signal on; the child is ours by its id.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

unsafe extern "C" {
    #[link_name = "getuid"]
    fn libc_getuid() -> u32;
}
