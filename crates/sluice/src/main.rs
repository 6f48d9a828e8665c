//! `sluice`: change data capture from PostgreSQL.
//!
//! The binary is argument parsing and wiring: the pipelines, their supervisor and the
//! HTTP server are libraries (`sluice-pipeline`, `sluice-server`); this crate reads the
//! command line, installs logging, handles signals, and maps outcomes to exit codes
//! (0 done, 1 failure, 2 bad configuration or a failed preflight).

mod commands;
mod demo;
mod operate;
mod server;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Stream PostgreSQL changes, in order, at least once."
)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `sluice_pg=debug`.
    #[arg(long, global = true, default_value = "info", env = "SLUICE_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run pipelines until interrupted: one per config file (`-c a.toml -c b.toml`),
    /// behind one HTTP server.
    Run {
        #[arg(short, long, default_value = "sluice.toml", num_args = 1)]
        config: Vec<PathBuf>,
        /// Stop cleanly once everything up to this LSN (e.g. 0/16B3748) is confirmed, like
        /// pg_recvlogical's --endpos: for catching up in batches and for benchmarks.
        #[arg(long, value_name = "LSN")]
        until_lsn: Option<sluice_core::Lsn>,
    },
    /// Run the server: any number of pipelines in one process and one data dir, managed
    /// through the HTTP API (`/v1/pipelines`, `/v1/tokens`) and, optionally, a directory
    /// of pipeline TOML files. The first start prints an admin token, once.
    Server {
        /// The server's data: its registry of pipelines, its tokens, each pipeline's log
        /// and state.
        #[arg(long, default_value = "./sluice-server-data", env = "SLUICE_DATA_DIR")]
        data_dir: PathBuf,
        /// A directory of pipeline TOML files (`*.toml`, one pipeline each), applied as
        /// they change.
        #[arg(long, env = "SLUICE_CONFIG_DIR")]
        config_dir: Option<PathBuf>,
        /// Address of the HTTP API and every pipeline's endpoints (port 0: any free port,
        /// written to <data-dir>/server.addr).
        #[arg(long, default_value = "127.0.0.1:7878", env = "SLUICE_LISTEN")]
        listen: std::net::SocketAddr,
        /// Addresses (CIDR blocks, comma-separated) that may use the management API and
        /// metrics; replaces the list kept in the data dir. Default: as kept (everyone
        /// until a list is set, also through PUT /v1/access).
        #[arg(long, env = "SLUICE_ALLOW_MANAGEMENT", value_delimiter = ',')]
        allow_management: Option<Vec<String>>,
        /// Addresses (CIDR blocks, comma-separated) that may consume (SSE, pull, waiting
        /// rooms); as --allow-management.
        #[arg(long, env = "SLUICE_ALLOW_CONSUMERS", value_delimiter = ',')]
        allow_consumers: Option<Vec<String>>,
        /// HTTPS: the server's certificate chain (PEM), reloaded when the file changes.
        #[arg(long, env = "SLUICE_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// HTTPS: the certificate's private key (PEM), reloaded when the file changes.
        #[arg(long, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The key that seals the secrets of pipeline configurations in the data dir
        /// (base64 of 32 bytes). Default: <data-dir>/secret.key, made at first start;
        /// SLUICE_SECRET_KEY gives the key itself instead of a file.
        #[arg(long, env = "SLUICE_SECRET_KEY_FILE")]
        secret_key_file: Option<PathBuf>,
        /// While rotating the secret key: the previous key, whose secrets are sealed
        /// again under the new key at start (or SLUICE_PREVIOUS_SECRET_KEY).
        #[arg(long, env = "SLUICE_PREVIOUS_SECRET_KEY_FILE")]
        previous_secret_key_file: Option<PathBuf>,
    },
    /// Check the database and the configuration, and say how to fix what is wrong.
    Check {
        #[arg(short, long, default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// Ask the running pipeline to copy a table (again) while it keeps streaming. The
    /// request travels through the WAL, so a pipeline that is down picks it up when it
    /// starts.
    Backfill {
        #[arg(short, long, default_value = "sluice.toml")]
        config: PathBuf,
        /// The table, as schema.table; it must be one the pipeline captures.
        #[arg(long)]
        table: String,
        /// Copy only the rows matching this SQL condition, e.g. "created_at > now() - interval '1 day'".
        #[arg(long = "where", value_name = "CONDITION")]
        filter: Option<String>,
    },
    /// The pipeline's slot as PostgreSQL sees it (active, wal_status, retained WAL, lag),
    /// and whether this data dir knows it.
    Status {
        #[arg(short, long, default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// Drop the pipeline's replication slot and publication, and forget its source state.
    Teardown {
        #[arg(short, long, default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// Print a new bearer token for the HTTP server and the hash to configure.
    Token,
    /// The transactional outbox: `install` creates the sluice.publish(...) SQL function.
    Outbox {
        #[arg(value_parser = ["install"])]
        action: String,
        #[arg(short, long, default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// A webhook or pull sink's waiting room on the running pipeline: list, redrive or
    /// skip (into the dead letters) parked keys.
    Parked {
        #[arg(value_enum)]
        action: operate::Action,
        #[arg(short, long, default_value = "sluice.toml")]
        config: PathBuf,
        /// The sink's name.
        #[arg(long)]
        sink: String,
        /// A key, as `parked list` shows it (repeatable).
        #[arg(long = "key")]
        keys: Vec<String>,
        /// Every parked key.
        #[arg(long)]
        all: bool,
        /// A bearer token of the HTTP server.
        #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// A webhook or pull sink's dead letters on the running pipeline: list or redrive.
    Dead {
        #[arg(value_enum)]
        action: operate::Action,
        #[arg(short, long, default_value = "sluice.toml")]
        config: PathBuf,
        #[arg(long)]
        sink: String,
        /// A dead letter's position, as `dead list` shows it (repeatable).
        #[arg(long = "position", alias = "offset")]
        positions: Vec<String>,
        #[arg(long)]
        all: bool,
        #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Start a throw-away PostgreSQL, write to a demo table, and stream the changes to stdout.
    Demo {
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // One thread runs the pipeline's tasks: the source is a single hot loop that gains
    // nothing from work stealing (two workers only passed it back and forth); blocking
    // work (the sink writer, fsync) has threads of its own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config, until_lsn } => commands::run(&config, until_lsn).await,
            Command::Server {
                data_dir,
                config_dir,
                listen,
                allow_management,
                allow_consumers,
                tls_cert,
                tls_key,
                secret_key_file,
                previous_secret_key_file,
            } => {
                let keys = sluice_control::sealed::KeySources {
                    file: secret_key_file,
                    previous_file: previous_secret_key_file,
                };
                let allow = sluice_control::access::AllowLists {
                    management: allow_management,
                    consumers: allow_consumers,
                };
                let tls = commands::tls_files(tls_cert, tls_key)?;
                server::run(&data_dir, config_dir, listen, tls, allow, keys).await
            }
            Command::Check { config } => commands::check(&config).await,
            Command::Teardown { config } => commands::teardown(&config).await,
            Command::Status { config } => operate::status(&config).await,
            Command::Backfill {
                config,
                table,
                filter,
            } => commands::backfill(&config, &table, filter).await,
            Command::Demo { seconds } => demo::run(seconds).await,
            Command::Token => commands::token(),
            Command::Outbox { config, .. } => operate::outbox_install(&config).await,
            Command::Parked {
                action,
                config,
                sink,
                keys,
                all,
                token,
            } => {
                operate::waiting_room(
                    &config,
                    &sink,
                    "parked",
                    action,
                    &keys,
                    all,
                    token.as_deref(),
                )
                .await
            }
            Command::Dead {
                action,
                config,
                sink,
                positions,
                all,
                token,
            } => {
                operate::waiting_room(
                    &config,
                    &sink,
                    "dead",
                    action,
                    &positions,
                    all,
                    token.as_deref(),
                )
                .await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
