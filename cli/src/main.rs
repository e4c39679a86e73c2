//! `commitq`: see and steer a commitq queue from a terminal or a browser.
//! Every command connects with `--url` or `DATABASE_URL` and acts as that
//! role; docs/cli.md has an example of each and the exit codes.

mod commands;
mod error;
mod output;
mod queries;
mod web;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::error::{CliError, Exit};

#[derive(Parser)]
#[command(name = "commitq", version, about = "See and steer a commitq job queue")]
struct Cli {
    /// Connection string: postgres://user@host:port/db or "host=... dbname=...".
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    url: Option<String>,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Each queue: waiting, running, latency, recent outcomes.
    Status,
    /// List jobs or show one.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Run jobs again: one by id, or every job matching filters.
    Retry(BulkArgs),
    /// Cancel jobs: one by id, or every job matching filters.
    Cancel(BulkArgs),
    /// Stop handing out a queue's jobs (enqueueing goes on; running jobs finish).
    Pause { queue: String },
    /// Hand out a paused queue's jobs again.
    Resume { queue: String },
    /// Cron schedules with their next and last tick.
    Schedules,
    /// Enqueue one job.
    Enqueue(commands::enqueue::EnqueueArgs),
    /// Run housekeeping once (rescue expired leases, promote, prune).
    Maintain,
    /// Serve the web dashboard and /metrics.
    Web(web::WebArgs),
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Jobs newest first, filtered; page with --before (the last id shown).
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Show jobs with an id below this one (the next page).
        #[arg(long, value_name = "ID")]
        before: Option<i64>,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10000))]
        limit: i64,
    },
    /// One job: args, attempts, error history, lease.
    Show { id: i64 },
}

#[derive(Args, Clone, Default)]
pub struct FilterArgs {
    #[arg(long)]
    queue: Option<String>,
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(queries::STATES))]
    state: Option<String>,
    #[arg(long)]
    kind: Option<String>,
}

impl FilterArgs {
    fn to_filter(&self, before: Option<i64>) -> queries::JobFilter {
        queries::JobFilter {
            queue: self.queue.clone(),
            state: self.state.clone(),
            kind: self.kind.clone(),
            before,
        }
    }
}

#[derive(Args)]
pub struct BulkArgs {
    /// The job; without it, every job matching the filters.
    #[arg(conflicts_with_all = ["queue", "state", "kind", "all"])]
    id: Option<i64>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Act on every job the action applies to, in every queue (required
    /// when no id and no filter is given).
    #[arg(long)]
    all: bool,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    yes: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::from(Exit::Ok as u8),
        Err(e) => {
            eprintln!("commitq: {e}");
            ExitCode::from(e.exit as u8)
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let url = cli.url.clone().ok_or_else(|| {
        CliError::usage("no database given").hint(
            "pass --url postgres://user@host:port/db (or \"host=... dbname=...\"), or set DATABASE_URL",
        )
    })?;
    let client = commitq::Client::connect(&url).await?;
    let json = cli.json;
    use commands::*;
    match cli.command {
        Command::Status => status::run(&client, json).await,
        Command::Jobs(JobsCommand::List {
            filter,
            before,
            limit,
        }) => jobs::list(&client, &filter.to_filter(before), limit, json).await,
        Command::Jobs(JobsCommand::Show { id }) => jobs::show(&client, id, json).await,
        Command::Retry(args) => {
            actions::bulk(&client, queries::JobAction::Retry, &args, json).await
        }
        Command::Cancel(args) => {
            actions::bulk(&client, queries::JobAction::Cancel, &args, json).await
        }
        Command::Pause { queue } => actions::pause(&client, &queue, true, json).await,
        Command::Resume { queue } => actions::pause(&client, &queue, false, json).await,
        Command::Schedules => status::schedules(&client, json).await,
        Command::Enqueue(args) => enqueue::run(&client, &args, json).await,
        Command::Maintain => maintain::run(&client, json).await,
        Command::Web(args) => web::serve(client, &url, args).await,
    }
}
