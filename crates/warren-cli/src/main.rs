//! `warren`: run the server (`warren serve`) or drive one.
//!
//! Exit codes: 0 success; 1 error; 2 bad usage; 3 not found; 4 not
//! authorised. `warren exec` and `warren shell` exit with the remote
//! command's code (128 + n when it died of signal n).

mod bench;
mod client;
mod cost;
mod limits;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "warren", version, about = "Self-hosted workspaces for people and AI agents")]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
pub struct Conn {
    /// Server URL. Env: WARREN_URL.
    #[arg(long, env = "WARREN_URL", default_value = "http://127.0.0.1:7474", global = true)]
    pub url: String,
    /// API key. Env: WARREN_API_KEY. Default: the admin key file of a local
    /// server (/var/lib/warren/admin.key), when readable.
    #[arg(long, env = "WARREN_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve(serve::ServeArgs),
    /// Create a workspace and print its id.
    Create(client::CreateArgs),
    /// List workspaces.
    Ls,
    /// Describe a workspace.
    Info { id: String },
    /// Run a command in a workspace, streaming its output.
    Exec(client::ExecArgs),
    /// Open an interactive shell in a workspace.
    Shell(client::ShellArgs),
    /// Copy files: `cp ./a ID:/path` uploads, `cp ID:/path ./a` downloads (`-` is stdin/stdout).
    Cp { src: String, dst: String },
    /// Kill workspaces.
    Kill {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Set a workspace's timeout, in seconds from now.
    Timeout { id: String, seconds: u64 },
    /// List templates, or import one: `warren templates import NAME IMAGE.tar`.
    Templates {
        #[command(subcommand)]
        action: Option<client::TemplateCmd>,
    },
    /// Usage per tenant and period: running/paused seconds, vCPU- and GiB-seconds.
    Usage {
        /// hour, day or month.
        #[arg(long, default_value = "day")]
        bucket: String,
        /// Unix seconds (default: 30 days ago).
        #[arg(long)]
        from: Option<u64>,
        /// Unix seconds (default: now).
        #[arg(long)]
        to: Option<u64>,
        /// Print CSV.
        #[arg(long)]
        csv: bool,
    },
    /// Show warm pools (admin key).
    Pools,
    /// Manage API keys (admin key): `keys`, `keys create --tenant T`, `keys revoke PREFIX`.
    Keys {
        #[command(subcommand)]
        action: Option<client::KeyCmd>,
    },
    /// Run benchmarks with their peers side by side (root; local provider).
    Bench(bench::BenchArgs),
    /// The design study's cost tables from the price catalog; `cost simulate` for fleet simulations.
    Cost(cost::CostArgs),
    /// Invoice preview and gross margin per tenant from metered usage (admin key: every tenant).
    Invoice {
        /// Month, YYYY-MM (default: the current one).
        #[arg(long)]
        month: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let conn = cli.conn;
    let result = rt.block_on(async move {
        let c = || client::Client::new(conn.clone());
        match cli.cmd {
            Cmd::Serve(a) => serve::run(a).await.map(|_| 0),
            Cmd::Bench(a) => bench::run(a).await,
            Cmd::Cost(a) => cost::run(a, conn.json),
            Cmd::Invoice { month } => c()?.invoice(month).await,
            Cmd::Pools => c()?.pools().await,
            Cmd::Usage { bucket, from, to, csv } => c()?.usage(&bucket, from, to, csv).await,
            Cmd::Keys { action } => c()?.keys(action).await,
            Cmd::Create(a) => c()?.create(a).await,
            Cmd::Ls => c()?.ls().await,
            Cmd::Info { id } => c()?.info(&id).await,
            Cmd::Exec(a) => c()?.exec(a).await,
            Cmd::Shell(a) => c()?.shell(a).await,
            Cmd::Cp { src, dst } => c()?.cp(&src, &dst).await,
            Cmd::Kill { ids } => c()?.kill(&ids).await,
            Cmd::Timeout { id, seconds } => c()?.timeout(&id, seconds).await,
            Cmd::Templates { action: None } => c()?.templates().await,
            Cmd::Templates { action: Some(client::TemplateCmd::Import { name, archive }) } => {
                c()?.import(&name, &archive).await
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("warren: {e:#}");
            ExitCode::from(client::exit_code_of(&e))
        }
    }
}
