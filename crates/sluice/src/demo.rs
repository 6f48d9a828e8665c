//! `sluice demo`: the whole path on a throw-away PostgreSQL. Starts a private server
//! (`sluice-pgtemp`, as the tests do), creates `public.orders`, writes to it twice a second, and streams the
//! changes to standard output until Ctrl-C or `--seconds`. Everything is removed at exit.

use std::process::ExitCode;
use std::time::Duration;

use sluice_pg::{ConnInfo, Connection};
use tokio_util::sync::CancellationToken;

use sluice_pipeline::{Config, Directory, Outcome, RunContext};

pub async fn run(seconds: Option<u64>) -> anyhow::Result<ExitCode> {
    eprintln!("sluice demo: starting a throw-away PostgreSQL (wal_level=logical) ...");
    let pg = tokio::task::spawn_blocking(sluice_pgtemp::PgServer::start)
        .await?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start PostgreSQL for the demo: {e:#}\n(scripts/demo.sh installs it)"
            )
        })?;
    pg.psql(
        "CREATE TABLE public.orders (id serial PRIMARY KEY, customer text NOT NULL, \
         status text NOT NULL, total numeric(10,2) NOT NULL, tags text[], \
         updated_at timestamptz NOT NULL DEFAULT now())",
    )?;
    let url = pg.url("postgres", "postgres");
    let dir = tempfile::tempdir()?;
    let config = Config::parse(&format!(
        r#"
[pipeline]
name = "demo"
data_dir = "{data}"
[source]
url = "{url}"
tables = ["public.orders"]
[[sinks]]
name = "console"
type = "stdout"
"#,
        data = dir.path().join("data").display()
    ))?;
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("demo config: {e:?}"))?;
    eprintln!("sluice demo: PostgreSQL on port {}; writing to public.orders; changes follow as JSON lines (Ctrl-C stops)", pg.port());

    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        match seconds {
            Some(s) => tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(s)) => {}
                _ = tokio::signal::ctrl_c() => {}
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        stop.cancel();
    });
    let writer = tokio::spawn(write_orders(ConnInfo::parse(&url)?, cancel.clone()));
    let ctx = RunContext {
        base_dir: dir.path().to_owned(),
        until: None,
        directory: Directory::new(),
    };
    let result = sluice_pipeline::run(&config, &ctx, cancel.clone()).await;
    cancel.cancel();
    let _ = writer.await;
    drop(pg);
    match result? {
        Outcome::Done => Ok(ExitCode::SUCCESS),
        Outcome::Refused(findings) => {
            eprint!("{}", sluice_pipeline::preflight::render(&findings));
            Ok(ExitCode::from(2))
        }
        Outcome::Abandoned => Ok(ExitCode::FAILURE),
    }
}

/// A small order-processing workload: new orders, status changes, the odd cancellation.
async fn write_orders(info: ConnInfo, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut conn = Connection::connect(&info, false).await?;
    let customers = ["ada", "grace", "linus", "margaret", "ken"];
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        n += 1;
        let sql = match n % 5 {
            1 | 2 => format!(
                "INSERT INTO orders (customer, status, total, tags) VALUES ('{}', 'new', {}.{:02}, ARRAY['web','n{}'])",
                customers[(n as usize) % customers.len()],
                n * 7 % 100,
                n % 100,
                n
            ),
            3 => "UPDATE orders SET status = 'paid', updated_at = now() WHERE id = (SELECT max(id) FROM orders)".into(),
            4 => "BEGIN; UPDATE orders SET status = 'shipped' WHERE status = 'paid'; \
                  INSERT INTO orders (customer, status, total) VALUES ('ada', 'new', 1.50); COMMIT"
                .into(),
            _ => "DELETE FROM orders WHERE id = (SELECT min(id) FROM orders WHERE status = 'new')".into(),
        };
        conn.execute(&sql).await?;
    }
}
