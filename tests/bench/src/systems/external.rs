//! Queues that exist only as a library of another language, each run by a
//! driver program in `tests/bench/peers/` that speaks the protocol of
//! `tests/bench/peers/README.md`: one process per measurement, settings in
//! the environment, one JSON object on its last line of output.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::Workload;
use crate::common::{Cluster, Load, Outcome, Sample};

#[derive(Clone, Debug)]
pub struct Driver {
    /// The system's name in the tables.
    pub name: &'static str,
    /// The interpreter: `node`, or the Python of the peers' venv.
    pub runtime: Runtime,
    /// The driver's file, relative to `tests/bench/peers`.
    pub script: &'static str,
}

#[derive(Clone, Copy, Debug)]
pub enum Runtime {
    Node,
    Python,
}

/// Every driver the benchmark knows.
pub fn drivers() -> Vec<Driver> {
    vec![
        Driver {
            name: "graphile-worker",
            runtime: Runtime::Node,
            script: "node/graphile-worker.mjs",
        },
        Driver {
            name: "pg-boss",
            runtime: Runtime::Node,
            script: "node/pg-boss.mjs",
        },
        Driver {
            name: "PgQueuer",
            runtime: Runtime::Python,
            script: "python/pgqueuer_driver.py",
        },
        Driver {
            name: "Procrastinate",
            runtime: Runtime::Python,
            script: "python/procrastinate_driver.py",
        },
    ]
}

impl Driver {
    fn program(&self) -> PathBuf {
        match self.runtime {
            Runtime::Node => PathBuf::from("node"),
            Runtime::Python => crate::peers_dir().join("venv/bin/python"),
        }
    }

    /// Run the driver for one workload; the parsed JSON of its last line.
    async fn call(&self, workload: &str, url: &str, load: &Load) -> Outcome<serde_json::Value> {
        let script = crate::source_dir().join("peers").join(self.script);
        let mut cmd = tokio::process::Command::new(self.program());
        cmd.arg(&script)
            .arg(workload)
            .env("BENCH_URL", url)
            .env("BENCH_JOBS", load.jobs.to_string())
            .env("BENCH_CONCURRENCY", load.concurrency.to_string())
            .env("BENCH_CLIENTS", load.clients.to_string())
            .env("BENCH_SECONDS", load.seconds.to_string())
            .env("BENCH_RATE", load.rate.to_string())
            .env("BENCH_TIMEOUT", load.timeout.as_secs().to_string())
            .env("BENCH_DRAIN_SECONDS", load.drain_seconds.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("{} {}: {e}", self.program().display(), script.display()))?;
        // The driver keeps its own deadline; this one catches a driver that hangs.
        let limit = load.timeout + Duration::from_secs(60);
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| format!("{workload}: no answer within {} s", limit.as_secs()))?
            .map_err(|e| format!("{workload}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(format!("{workload} exited with {}: {last}", out.status));
        }
        let last = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        serde_json::from_str(last).map_err(|e| format!("{workload}: bad output {last:?}: {e}"))
    }

    pub async fn prepare(&self, cluster: &Cluster, db: &str) -> Outcome<String> {
        cluster.fresh_database(db).await?;
        // Setup runs no workload; the settings only need to be valid.
        let load = Load {
            jobs: 1,
            seconds: 1,
            clients: 1,
            concurrency: 1,
            rate: 1,
            timeout: Duration::from_secs(300),
            drain_seconds: 1,
        };
        let v = self.call("setup", &cluster.url(db), &load).await?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
        Ok(format!(
            "{} {}; {}",
            field("system"),
            field("version"),
            field("config")
        ))
    }

    pub async fn run(
        &self,
        w: Workload,
        cluster: &Cluster,
        db: &str,
        load: &Load,
    ) -> Outcome<Sample> {
        let workload = match w {
            Workload::Bulk => "bulk",
            Workload::Drain => "drain",
            Workload::Single => "single",
            Workload::Latency => "latency",
            other => return Err(format!("{other:?} is not measured for {}", self.name)),
        };
        let v = self.call(workload, &cluster.url(db), load).await?;
        let num = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_f64())
                .ok_or_else(|| format!("{workload}: no {k:?} in {v}"))
        };
        Ok(match w {
            Workload::Latency => Sample {
                p50: num("p50_ms")?,
                p99: num("p99_ms")?,
                max: num("max_ms")?,
                ..Default::default()
            },
            _ => Sample {
                // Present only when the drain was stopped before the end.
                finished: v.get("jobs").and_then(|x| x.as_u64()),
                ..Sample::rate(num("rate")?)
            },
        })
    }
}
