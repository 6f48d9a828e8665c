//! Commands for operators: `outbox install`, and `parked` / `dead` against the running
//! pipeline's HTTP API (the pipeline owns its state file, so these never open it).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_pg::{ConnInfo, Connection};

use sluice_pipeline::Config;

/// `sluice.publish(...)`: an event written through the WAL with the caller's transaction
/// (`pg_logical_emit_message(true, ...)`), so it exists if and only if that commits,
/// and no table grows. SECURITY DEFINER, so callers need no replication privilege.
pub const PUBLISH_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS sluice;
CREATE OR REPLACE FUNCTION sluice.publish(
    topic text,
    key text,
    payload jsonb,
    headers jsonb DEFAULT '{}'::jsonb,
    deliver_at timestamptz DEFAULT NULL,
    ttl interval DEFAULT NULL,
    ordered boolean DEFAULT true
) RETURNS pg_lsn
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog
AS $sluice$
BEGIN
    IF topic IS NULL OR topic = '' THEN
        RAISE EXCEPTION 'sluice.publish: topic must not be empty';
    END IF;
    RETURN pg_logical_emit_message(true, 'sluice.outbox', jsonb_build_object(
        'topic', topic,
        'key', key,
        'payload', payload,
        'headers', coalesce(headers, '{}'::jsonb),
        'deliver_at_ms', (extract(epoch FROM deliver_at) * 1000)::bigint,
        'ttl_ms', (extract(epoch FROM ttl) * 1000)::bigint,
        'ordered', coalesce(ordered, true)
    )::text);
END
$sluice$;
COMMENT ON FUNCTION sluice.publish(text, text, jsonb, jsonb, timestamptz, interval, boolean) IS
    'Publishes an event to Sluice sinks subscribed to its topic, if and only if the calling transaction commits.';
"#;

pub async fn outbox_install(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(path).map_err(anyhow::Error::msg)?;
    let info = ConnInfo::parse(&config.source.url)?;
    let mut conn = Connection::connect(&info, false).await?;
    conn.execute(PUBLISH_SQL).await.map_err(|e| {
        anyhow::anyhow!("cannot install sluice.publish: {e} (the role needs CREATE on the database, and to be allowed pg_logical_emit_message: a superuser, or a role granted EXECUTE on it)")
    })?;
    conn.close().await;
    println!("installed sluice.publish(topic, key, payload, headers, deliver_at, ttl, ordered)");
    println!("callers need EXECUTE on it (PUBLIC has it; REVOKE it and GRANT to your application's role to restrict)");
    if !config
        .sinks
        .iter()
        .any(|s| s.events().is_some_and(|e| !e.topics.is_empty()))
    {
        println!(
            "note: no sink lists topics yet: add topics = [\"...\"] to a webhook or pull sink"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What `parked` and `dead` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    List,
    Redrive,
    Skip,
}

fn api_base(config: &Config, base: &Path) -> anyhow::Result<String> {
    let section = config.server_section().ok_or_else(|| {
        anyhow::anyhow!("the pipeline has no [server]: add one (listen = \"127.0.0.1:7878\") to manage its waiting room")
    })?;
    let mut addr: std::net::SocketAddr = section.listen.parse()?;
    if addr.port() == 0 {
        // Bound to any free port: the running instance wrote down which.
        let dir = if config.pipeline.data_dir.is_absolute() {
            config.pipeline.data_dir.clone()
        } else {
            base.join(&config.pipeline.data_dir)
        };
        let path = dir.join("server.addr");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "[server] listen has port 0 and {} cannot be read ({e}): is the pipeline running?",
                path.display()
            )
        })?;
        addr = text.trim().parse()?;
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(format!("http://{addr}"))
}

async fn call(
    config: &Config,
    base: &Path,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    // As a message: its text already holds its cause, which `{:#}` would print again.
    let client = sluice_sinks::webhook::client_builder()
        .map_err(anyhow::Error::msg)?
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{}{path}", api_base(config, base)?);
    let mut req = client.request(method, &url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.map_err(|e| {
        anyhow::anyhow!("cannot reach the pipeline at {url}: {e} (is `sluice run` up?)")
    })?;
    let status = resp.status();
    let text = resp.text().await?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let why = v
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or(v.to_string());
        anyhow::bail!("{url}: HTTP {status}: {why}");
    }
    Ok(v)
}

fn choice(keys: &[String], all: bool, field: &str) -> anyhow::Result<Value> {
    if all {
        return Ok(json!({ "all": true }));
    }
    if keys.is_empty() {
        anyhow::bail!("name what to act on: --key ... (repeatable) or --all");
    }
    Ok(json!({ field: keys }))
}

/// `parked` or `dead` (`area`): list, or act on the `names` (keys, or dead letters' positions)
/// or on `all`.
pub async fn waiting_room(
    path: &Path,
    sink: &str,
    area: &str,
    action: Action,
    names: &[String],
    all: bool,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path).map_err(anyhow::Error::msg)?;
    let dir = crate::commands::base_dir(path);
    let base = format!("/v1/sinks/{sink}/{area}");
    let field = if area == "dead" { "positions" } else { "keys" };
    let (method, path, body) = match action {
        Action::List => (reqwest::Method::GET, base, None),
        Action::Skip if area == "dead" => {
            anyhow::bail!("dead letters are redriven or kept; there is nothing to skip")
        }
        Action::Redrive => (
            reqwest::Method::POST,
            format!("{base}/redrive"),
            Some(choice(names, all, field)?),
        ),
        Action::Skip => (
            reqwest::Method::POST,
            format!("{base}/skip"),
            Some(choice(names, all, field)?),
        ),
    };
    let v = call(&config, dir, token, method, &path, body).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

/// `sluice status`: the slot as PostgreSQL sees it, one `key: value` line each. The
/// running instance's own view (reconnects, the last error, heartbeats) is in its
/// metrics and, under `sluice server`, its API status.
pub async fn status(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load_valid(path).map_err(anyhow::Error::msg)?;
    let info = ConnInfo::parse(&config.source.url)?;
    let mut conn = Connection::connect(&info, false).await?;
    let slot = config.slot();
    let rows = conn
        .query(&format!(
            "SELECT active, active_pid, to_jsonb(s) ->> 'wal_status', confirmed_flush_lsn, \
             pg_current_wal_lsn() - confirmed_flush_lsn, pg_current_wal_lsn() - restart_lsn \
             FROM pg_replication_slots s WHERE slot_name = {}",
            sluice_pg::wire::quote_literal(&slot)
        ))
        .await?;
    conn.close().await;
    println!("pipeline: {}", config.pipeline.name);
    println!("slot: {slot}");
    let Some(r) = rows.first() else {
        println!("slot_exists: false");
        println!("note: a first start makes the slot; if this pipeline ran before, its slot was dropped and `sluice run` acts per [source] on_slot_lost");
        return Ok(ExitCode::from(1));
    };
    let col = |i: usize| r.get(i).cloned().flatten().unwrap_or_else(|| "-".into());
    println!("slot_exists: true");
    println!("active: {}", col(0) == "t");
    println!("active_pid: {}", col(1));
    println!("wal_status: {}", col(2));
    println!("confirmed_lsn: {}", col(3));
    println!("lag_bytes: {}", col(4));
    println!("retained_bytes: {}", col(5));
    if col(2) == "lost" {
        println!("note: the slot was invalidated (max_slot_wal_keep_size); `sluice run` acts per [source] on_slot_lost");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
