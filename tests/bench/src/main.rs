//! commitq's benchmark: commitq next to raw-SQL baselines and other
//! PostgreSQL job queues (pgmq, PgQ, graphile-worker, pg-boss, PgQueuer,
//! Procrastinate), every system on the same cluster in the same run, the
//! systems of a workload interleaved round after round (A B C A B C ...),
//! the median of the rounds reported with min and max. Writes a markdown
//! report and a PNG chart to `results/`, and the full run's tables into
//! docs/performance.md.
//!
//!     make bench           # full run (installs the peers first)
//!     make bench-quick     # 20,000 jobs, 3 s, one round

mod common;
mod pages;
mod report;
mod systems;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use common::{Cluster, Load, Outcome, Sample};
use systems::commitq::{Commitq, Drain, Keys, PoolConfig};
use systems::commitq_wait::Waiting;
use systems::raw::{Finish, Raw};
use systems::{System, Workload};

#[derive(Parser, Debug)]
#[command(about = "Measure commitq next to raw SQL and other PostgreSQL job queues")]
struct Args {
    /// Jobs for the bulk enqueue and drain workloads.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Seconds for the single-enqueue and latency workloads.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections for the single-enqueue workload.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Handlers (claimers, for SQL-level drains) of every system.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Jobs per second of the latency workload.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Rounds of every workload; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds after which one measurement is given up.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Seconds after which an external driver's drain is stopped and its
    /// rate taken from the jobs it finished (the slowest queues need many
    /// minutes for 100,000 jobs, far more with vacuum blocked).
    #[arg(long, default_value_t = 120)]
    drain_seconds: u64,
    /// Small and fast: 20,000 jobs, 3 seconds, one round; docs/performance.md is left alone.
    #[arg(long)]
    quick: bool,
    /// Measure only the systems whose family or name contains one of these
    /// comma-separated texts (e.g. `--only raw,pgmq`), or the systems named
    /// exactly after a `=`, separated by `|`; docs/performance.md is left alone.
    #[arg(long)]
    only: Option<String>,
    /// Run only these workloads (comma-separated, e.g. `--workloads
    /// drain,keyed-drain`); docs/performance.md is left alone.
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<Workload>,
    /// Print the RSS of a worker pool with 100 busy handlers, measured in
    /// this process, and exit (the full run starts itself with it, so that
    /// the figure is of a fresh process).
    #[arg(long, hide = true)]
    memory_probe: bool,
    /// Do not copy the tables into docs/performance.md (`--no-readme` is
    /// the older name).
    #[arg(long, alias = "no-readme")]
    no_tables: bool,
    /// Time every page of `commitq web` on a database of this many jobs
    /// (1,000,000 for the figures in docs/operations.md) and exit.
    #[arg(long, value_name = "JOBS")]
    bench_pages: Option<i64>,
    /// The cluster's port on 127.0.0.1 (`dev/cluster.sh`'s).
    #[arg(long, env = "COMMITQ_PGPORT", default_value_t = 54329)]
    port: u16,
}

/// This crate's folder (`tests/bench`), where the peers' drivers live.
pub fn source_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project's top folder.
pub fn project_dir() -> PathBuf {
    source_dir().join("../..")
}

/// Where `install-peers.sh` puts what it installs (pgmq's SQL, the venv).
pub fn peers_dir() -> PathBuf {
    project_dir().join("target/bench-peers")
}

/// What each workload measures, in the order of the report.
fn plan() -> Vec<(Workload, Vec<System>)> {
    let externals = || {
        systems::external::drivers()
            .into_iter()
            .map(System::External)
    };
    let raw_claim = |batch, finish| System::Raw(Raw::Claim { batch, finish });
    // The main rows run the pool with its defaults, as a user gets it; the
    // configurations set by hand are extra rows, named as such.
    let pool = |config, keys| {
        System::Commitq(Commitq::Pool {
            handlers: 16,
            config,
            keys,
        })
    };
    use PoolConfig::{Defaults, NoPrefetch, Tuned};
    let enqueuers = || {
        [
            System::Raw(Raw::Insert),
            System::Commitq(Commitq::Functions),
            System::Pgmq,
            System::Pgq,
        ]
        .into_iter()
        .chain(externals())
        .collect::<Vec<_>>()
    };
    let sql_drain = |how| System::Commitq(Commitq::Sql { batch: 100, how });
    // The waiting claim beside the NOTIFY path (commitq_wait.rs).
    let waiters =
        || [Waiting::ClaimWait, Waiting::Listen].map(|how| System::Commitq(Commitq::Waiters(how)));
    let bulk = enqueuers()
        .into_iter()
        .chain([
            System::Raw(Raw::ParallelInsert),
            System::Commitq(Commitq::ParallelFunctions),
        ])
        .collect();
    vec![
        (Workload::Bulk, bulk),
        (
            Workload::Drain,
            [
                raw_claim(1, Finish::Delete),
                raw_claim(10, Finish::Delete),
                raw_claim(100, Finish::Delete),
                raw_claim(100, Finish::Update),
                sql_drain(Drain::ClaimThenComplete),
                sql_drain(Drain::CompleteAndClaim),
                pool(Defaults, Keys::None),
                pool(Tuned, Keys::None),
                System::Pgmq,
                System::Pgq,
            ]
            .into_iter()
            .chain(externals())
            .collect(),
        ),
        (
            Workload::Single,
            enqueuers().into_iter().chain(waiters()).collect(),
        ),
        (
            Workload::Latency,
            [pool(Defaults, Keys::None)]
                .into_iter()
                .chain(waiters())
                .chain([System::Pgmq])
                .chain(externals())
                .collect(),
        ),
        (
            Workload::DrainVacuumBlocked,
            [
                raw_claim(100, Finish::Delete),
                sql_drain(Drain::CompleteAndClaim),
                pool(Defaults, Keys::None),
                System::Pgmq,
                System::Pgq,
            ]
            .into_iter()
            .chain(externals())
            .collect(),
        ),
        // Each keyed pool right after the same pool without keys, in every
        // round: the ratio is of two drains minutes apart, not of this one
        // and the plain drain an hour earlier (the pool's rate drifts more
        // than that between runs on a noisy machine).
        (
            Workload::KeyedDrain,
            vec![
                pool(Defaults, Keys::None),
                pool(Defaults, Keys::Concurrency(200)),
                pool(Defaults, Keys::Idempotency),
                pool(NoPrefetch, Keys::None),
                pool(NoPrefetch, Keys::Concurrency(200)),
                pool(Tuned, Keys::None),
                pool(Tuned, Keys::Concurrency(200)),
                // Fair claiming (sql/flow_claim.sql) next to the same drain
                // without it: the ratio is the fair queue's cost.
                pool(
                    Defaults,
                    Keys::Tenants {
                        tenants: 100,
                        fair: false,
                    },
                ),
                pool(
                    Defaults,
                    Keys::Tenants {
                        tenants: 100,
                        fair: true,
                    },
                ),
            ],
        ),
    ]
}

/// Every round's outcome of one system in one workload.
pub struct Row {
    pub workload: Workload,
    pub system: System,
    pub samples: Vec<Outcome<Sample>>,
}

/// Run `w` once for `system`; drains also measure what the system's tables
/// take afterwards, and the vacuum-blocked drain runs inside a transaction
/// held open on the system's database.
async fn measure(system: &System, w: Workload, cluster: &Cluster, load: &Load) -> Outcome<Sample> {
    let db_url = cluster.kv(&system.database());
    let holder = match w {
        Workload::DrainVacuumBlocked => Some(common::hold_vacuum_horizon(&db_url).await?),
        _ => None,
    };
    let run_as = match w {
        Workload::DrainVacuumBlocked => Workload::Drain,
        w => w,
    };
    let mut sample = system.run(run_as, cluster, load).await?;
    if matches!(run_as, Workload::Drain | Workload::KeyedDrain) {
        let c = commitq_tests::connect(&db_url).await;
        sample.bytes = Some(common::relation_bytes(&c).await?);
    }
    drop(holder);
    Ok(sample)
}

/// The worker pool's memory, measured by a fresh copy of this program: this
/// process has grown through the other workloads.
async fn memory_in_fresh_process(args: &Args) -> Outcome<f64> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = tokio::process::Command::new(exe)
        .args(["--memory-probe", "--port", &args.port.to_string()])
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().map_err(|_| {
        format!(
            "memory probe: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    if args.quick {
        args.jobs = 20_000;
        args.seconds = 3;
        args.rounds = 1;
    }
    let load = Load {
        jobs: args.jobs,
        seconds: args.seconds,
        clients: args.clients,
        concurrency: args.concurrency,
        rate: args.rate,
        timeout: Duration::from_secs(args.timeout),
        drain_seconds: args.drain_seconds,
    };
    let cluster = Cluster {
        host: "127.0.0.1".into(),
        port: args.port,
        user: "postgres".into(),
    };
    if let Some(jobs) = args.bench_pages {
        if let Err(e) = pages::run(&cluster, jobs).await {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    if args.memory_probe {
        let db = System::Commitq(Commitq::Functions).database();
        match systems::commitq::memory_at(&cluster, &db, 100).await {
            Ok(mib) => println!("{mib:.1}"),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        return;
    }

    let wanted = |s: &System| {
        args.only.as_ref().is_none_or(|only| {
            let only = only.to_lowercase();
            let name = s.name().to_lowercase();
            match only.strip_prefix('=') {
                // Names have commas: exact names are separated by `|`.
                Some(exact) => exact.split('|').any(|e| name == e.trim()),
                None => only.split(',').any(|o| {
                    let o = o.trim();
                    s.family().to_lowercase().contains(o) || name.contains(o)
                }),
            }
        })
    };
    let plan: Vec<(Workload, Vec<System>)> = plan()
        .into_iter()
        .filter(|(w, _)| args.workloads.is_empty() || args.workloads.contains(w))
        .map(|(w, systems)| (w, systems.into_iter().filter(&wanted).collect::<Vec<_>>()))
        .filter(|(_, systems)| !systems.is_empty())
        .collect();

    // Each family is installed once, in a database of its own.
    let mut families: Vec<(String, Outcome<String>)> = Vec::new();
    for (_, systems) in &plan {
        for s in systems {
            if families.iter().any(|(f, _)| f == s.family()) {
                continue;
            }
            eprintln!("preparing {} ...", s.family());
            let prepared = s.prepare(&cluster).await;
            if let Err(e) = &prepared {
                eprintln!("  {} will be skipped: {e}", s.family());
            }
            families.push((s.family().to_string(), prepared));
        }
    }
    let ready = |s: &System| families.iter().any(|(f, p)| f == s.family() && p.is_ok());

    let total: usize = plan.iter().map(|(_, s)| s.len()).sum::<usize>() * args.rounds;
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap()
            .progress_chars("=> "),
    );
    let mut rows: Vec<Row> = Vec::new();
    for (w, systems) in &plan {
        let mut samples: Vec<Vec<Outcome<Sample>>> = vec![Vec::new(); systems.len()];
        for round in 1..=args.rounds {
            for (i, s) in systems.iter().enumerate() {
                bar.set_message(format!("round {round}: {:?} / {}", w, s.name()));
                let sample = if ready(s) {
                    measure(s, *w, &cluster, &load).await
                } else {
                    Err("not installed".into())
                };
                if let Err(e) = &sample {
                    bar.suspend(|| eprintln!("{:?} / {}: {e}", w, s.name()));
                }
                samples[i].push(sample);
                bar.inc(1);
            }
        }
        rows.extend(
            systems
                .iter()
                .cloned()
                .zip(samples)
                .map(|(system, samples)| Row {
                    workload: *w,
                    system,
                    samples,
                }),
        );
    }
    bar.finish_and_clear();

    let memory = if wanted(&System::Commitq(Commitq::Functions)) {
        Some(memory_in_fresh_process(&args).await)
    } else {
        None
    };

    let report = report::Report {
        args: format!(
            "{} jobs, {} handlers, {} clients, {} s, {} jobs/s for latency, median of {} rounds",
            args.jobs, args.concurrency, args.clients, args.seconds, args.rate, args.rounds
        ),
        load,
        rows,
        families,
        memory,
    };
    let full_run = !args.quick && args.only.is_none() && args.workloads.is_empty();
    if let Err(e) = report.write(&cluster, full_run, !args.no_tables).await {
        eprintln!("writing the report: {e}");
        std::process::exit(1);
    }
}
