//! `sluice demo`: the whole path on a throw-away PostgreSQL. Starts a private PostgreSQL
//! (`sluice-pgtemp`, as the tests do), creates `public.orders`, writes to it twice a
//! second, and runs a `sluice server` with the console and a demo pipeline that streams the
//! changes to standard output and to an SSE feed, until Ctrl-C or `--seconds`. Everything
//! is removed at exit.

use std::process::ExitCode;
use std::time::Duration;

use sluice_pg::{ConnInfo, Connection};
use tokio_util::sync::CancellationToken;

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

    // A server of its own, as `sluice server` runs, with the console; its data and key
    // go with the demo.
    // Each attempt on a data dir of its own: a first start makes the admin token.
    let open = |listen: &str, sub: &str| {
        let listen = listen.parse().expect("a literal address");
        let data = dir.path().join(sub);
        async move {
            let keys =
                sluice_control::sealed::SecretKeys::ephemeral().map_err(anyhow::Error::msg)?;
            crate::server::start(&data, None, listen, None, Default::default(), keys).await
        }
    };
    // The usual port if it is free, any port if not.
    let started = match open("127.0.0.1:7878", "server").await {
        Ok(s) => s,
        Err(_) => open("127.0.0.1:0", "server-any-port").await?,
    };
    // The controller runs while the pipeline is created through it.
    let (handle, addr, token) = (
        started.handle.clone(),
        started.addr,
        started.first_token.clone(),
    );
    let cancel = CancellationToken::new();
    let server = tokio::spawn(started.run(cancel.clone()));
    let pipeline = serde_json::json!({
        "pipeline": {"name": "demo"},
        "source": {"url": url, "tables": ["public.orders"]},
        "sinks": [{"name": "console", "type": "stdout"}, {"name": "feed", "type": "sse"}]
    });
    if let Err(e) = handle.put(pipeline, None).await {
        cancel.cancel();
        let _ = server.await;
        anyhow::bail!("cannot create the demo pipeline: {e}");
    }
    let addr = addr.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
    eprintln!(
        "sluice demo: PostgreSQL on port {}; writing to public.orders; changes follow as JSON lines (Ctrl-C stops)",
        pg.port()
    );
    if let Some(token) = &token {
        eprintln!("sluice demo: the console is at http://{addr}/ ; sign in with {token}");
    }

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
    let _ = server.await;
    let _ = writer.await;
    drop(pg);
    Ok(ExitCode::SUCCESS)
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
