//! End to end: `sluice check` finds every preflight problem and says how to fix it (exit
//! code 2); `sluice run` refuses to start on a blocking one without creating anything; a
//! least-privileged role works with a publication a DBA created; `sluice teardown` drops
//! only what the pipeline owns.

mod support;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::*;

fn sluice(p: &Pipeline, sub: &str) -> Output {
    p.command(sub)
}

fn text(out: &Output) -> String {
    output_text(out)
}

/// Runs `sluice check`, which must exit with 2 and print a `FAIL` line containing `what`
/// followed by a `fix:` line containing `fix`. Returns the whole output.
fn check_fails(p: &Pipeline, what: &str, fix: &str) -> String {
    let out = sluice(p, "check");
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "check should exit with 2:\n{all}"
    );
    assert_failure(&all, &String::from_utf8_lossy(&out.stdout), what, fix);
    all
}

fn assert_failure(all: &str, stdout: &str, what: &str, fix: &str) {
    let lines: Vec<&str> = stdout.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with("FAIL") && l.contains(what))
        .unwrap_or_else(|| panic!("no FAIL line mentioning {what:?}:\n{all}"));
    let fix_line = lines.get(i + 1).map(|l| l.trim()).unwrap_or_default();
    assert!(
        fix_line.starts_with("fix:") && fix_line.contains(fix),
        "the FAIL line for {what:?} should be followed by a fix mentioning {fix:?}:\n{all}"
    );
}

/// Runs `sluice check`, which must pass every check.
fn check_passes(p: &Pipeline) -> String {
    let out = sluice(p, "check");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "check should pass:\n{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("FAIL"), "{all}");
    assert!(stdout.contains("all checks passed"), "{all}");
    all
}

/// `pg_recvlogical --start` on `slot`, as a child process killed on drop.
struct Recvlogical(Child);

impl Recvlogical {
    fn start(pg: &PgServer, slot: &str, options: &[&str]) -> Recvlogical {
        let mut cmd = Command::new(sluice_testkit::pg_bin("pg_recvlogical"));
        cmd.args(["-h", pg.host(), "-p", &pg.port().to_string()])
            .args(["-U", "postgres", "-d", "postgres", "--slot", slot])
            .args(["--start", "--no-loop", "-f", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for o in options {
            cmd.args(["-o", o]);
        }
        let child = Recvlogical(cmd.spawn().expect("spawn pg_recvlogical"));
        let sql = format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'");
        wait_until(WAIT, "pg_recvlogical to hold its slot", || {
            (pg.psql(&sql).ok()?.trim() == "t").then_some(())
        })
        .unwrap();
        child
    }
}

impl Drop for Recvlogical {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn slots(pg: &PgServer) -> String {
    pg.psql("SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots")
        .unwrap()
}

fn publications(pg: &PgServer) -> String {
    pg.psql("SELECT string_agg(pubname, ',' ORDER BY pubname) FROM pg_publication")
        .unwrap()
}

const ORDERS: &str = "CREATE TABLE public.orders (id int PRIMARY KEY, status text);";

#[test]
fn wal_level_replica_is_reported() {
    let pg = PgServer::builder()
        .setting("wal_level", "replica")
        .start()
        .unwrap();
    pg.psql(ORDERS).unwrap();
    let p = Pipeline::new(&pg, "wal", &["public.orders"], "");
    check_fails(&p, "wal_level is \"replica\"", "wal_level = logical");

    // `run` cannot wait that out: it refuses to start and creates nothing.
    let out = sluice(&p, "run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(slots(&pg), "");
    assert_eq!(publications(&pg), "");
}

#[test]
fn no_free_replication_slot_is_reported() {
    let pg = PgServer::builder()
        .setting("max_replication_slots", "1")
        .start()
        .unwrap();
    pg.psql(ORDERS).unwrap();
    pg.psql("SELECT pg_create_logical_replication_slot('other_tool', 'test_decoding')")
        .unwrap();
    let p = Pipeline::new(&pg, "noslot", &["public.orders"], "");
    check_fails(
        &p,
        "no free replication slot (1 of max_replication_slots = 1 used)",
        "max_replication_slots",
    );
}

#[test]
fn no_free_wal_sender_is_reported() {
    let pg = PgServer::builder()
        .setting("max_wal_senders", "1")
        .start()
        .unwrap();
    pg.psql(ORDERS).unwrap();
    pg.psql("SELECT pg_create_logical_replication_slot('other_tool', 'test_decoding')")
        .unwrap();
    let _holder = Recvlogical::start(&pg, "other_tool", &[]);
    let p = Pipeline::new(&pg, "nosender", &["public.orders"], "");
    check_fails(
        &p,
        "no free wal sender (1 of max_wal_senders = 1 in use)",
        "max_wal_senders",
    );
}

#[test]
fn role_without_replication_is_reported() {
    let pg = PgServer::start().unwrap();
    pg.psql(&format!(
        "{ORDERS} CREATE ROLE norepl LOGIN; GRANT SELECT ON public.orders TO norepl;
         CREATE PUBLICATION dba_pub FOR TABLE public.orders;"
    ))
    .unwrap();
    let p = Pipeline::with_url(
        &pg.url("norepl", "postgres"),
        "norepl",
        &["public.orders"],
        "publication = \"dba_pub\"",
    );
    check_fails(
        &p,
        "role norepl lacks the REPLICATION attribute",
        "ALTER ROLE \"norepl\" REPLICATION",
    );
}

#[test]
fn role_without_select_on_a_table_is_reported() {
    let pg = PgServer::start().unwrap();
    pg.psql(&format!(
        "{ORDERS} CREATE TABLE public.secret (id int PRIMARY KEY);
         CREATE ROLE nosel LOGIN REPLICATION; GRANT SELECT ON public.orders TO nosel;
         CREATE PUBLICATION dba_pub FOR TABLE public.orders, public.secret;"
    ))
    .unwrap();
    let p = Pipeline::with_url(
        &pg.url("nosel", "postgres"),
        "nosel",
        &["public.orders", "public.secret"],
        "publication = \"dba_pub\"",
    );
    let all = check_fails(
        &p,
        "nosel may not SELECT from public.secret",
        "GRANT SELECT ON \"public\".\"secret\" TO \"nosel\"",
    );
    assert!(
        !all.contains("SELECT from public.orders"),
        "only the table without the grant is reported:\n{all}"
    );
}

#[test]
fn a_missing_table_is_reported() {
    let pg = PgServer::start().unwrap();
    pg.psql(ORDERS).unwrap();
    let p = Pipeline::new(&pg, "missing", &["public.orders", "public.nope"], "");
    check_fails(&p, "table public.nope does not exist", "[source] tables");
}

#[test]
fn tables_without_a_usable_replica_identity_are_reported() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE TABLE public.nopk (id int, v text);
         CREATE TABLE public.nopk_nothing (id int, v text);
         ALTER TABLE public.nopk_nothing REPLICA IDENTITY NOTHING;
         CREATE TABLE public.pk_nothing (id int PRIMARY KEY, v text);
         ALTER TABLE public.pk_nothing REPLICA IDENTITY NOTHING;",
    )
    .unwrap();

    let p = Pipeline::new(&pg, "nopk", &["public.nopk"], "");
    check_fails(
        &p,
        "public.nopk has no primary key",
        "REPLICA IDENTITY FULL",
    );
    for t in ["nopk_nothing", "pk_nothing"] {
        let p = Pipeline::new(&pg, t, &[&format!("public.{t}")], "");
        check_fails(
            &p,
            &format!("public.{t} has REPLICA IDENTITY NOTHING"),
            &format!("ALTER TABLE \"public\".\"{t}\" REPLICA IDENTITY"),
        );
    }
}

#[test]
fn excluding_a_primary_key_column_is_reported() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE TABLE public.lines (order_id int, line int, sku text, secret text,
                                    PRIMARY KEY (order_id, line));",
    )
    .unwrap();
    let p = Pipeline::new(
        &pg,
        "exclpk",
        &["public.lines"],
        "exclude_columns = { \"public.lines\" = [\"secret\", \"line\"] }",
    );
    let all = check_fails(
        &p,
        "public.lines.line is part of the primary key",
        "exclude_columns",
    );
    assert!(!all.contains("lines.secret"), "{all}");

    let p = Pipeline::new(
        &pg,
        "exclmissing",
        &["public.lines"],
        "exclude_columns = { \"public.lines\" = [\"nosuch\"] }",
    );
    check_fails(&p, "public.lines has no column nosuch", "exclude_columns");
}

#[test]
fn a_slot_in_use_by_another_process_is_reported() {
    let pg = PgServer::start().unwrap();
    pg.psql(&format!(
        "{ORDERS} CREATE PUBLICATION sluice_busy FOR TABLE public.orders;
         SELECT pg_create_logical_replication_slot('sluice_busy', 'pgoutput');"
    ))
    .unwrap();
    let _holder = Recvlogical::start(
        &pg,
        "sluice_busy",
        &["proto_version=1", "publication_names=sluice_busy"],
    );
    let pid = pg
        .psql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'sluice_busy'")
        .unwrap();
    assert!(pid.parse::<u32>().is_ok(), "{pid}");
    let p = Pipeline::new(&pg, "busy", &["public.orders"], "");
    let all = check_fails(
        &p,
        &format!("slot sluice_busy is in use by process {pid}"),
        &format!("pg_terminate_backend({pid})"),
    );
    assert!(
        !all.contains("a running instance of this pipeline"),
        "a stranger is not this pipeline:\n{all}"
    );
}

#[test]
fn a_configured_publication_that_does_not_exist_is_reported() {
    let pg = PgServer::start().unwrap();
    pg.psql(&format!(
        "{ORDERS} CREATE TABLE public.items (id int PRIMARY KEY);"
    ))
    .unwrap();
    let p = Pipeline::new(
        &pg,
        "nopub",
        &["public.orders"],
        "publication = \"dba_pub\"",
    );
    check_fails(
        &p,
        "publication dba_pub does not exist",
        "CREATE PUBLICATION \"dba_pub\" FOR TABLE \"public\".\"orders\"",
    );
    // `run` does not create someone else's publication either.
    let out = sluice(&p, "run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(publications(&pg), "");
    assert_eq!(slots(&pg), "");

    // A publication that lacks a configured table is reported too.
    pg.psql("CREATE PUBLICATION dba_pub FOR TABLE public.orders")
        .unwrap();
    let p = Pipeline::new(
        &pg,
        "nopub",
        &["public.orders", "public.items"],
        "publication = \"dba_pub\"",
    );
    check_fails(
        &p,
        "publication dba_pub does not list public.items",
        "ALTER PUBLICATION \"dba_pub\" ADD TABLE",
    );
}

#[test]
fn a_least_privileged_role_passes_and_streams_with_a_dba_publication() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE TABLE public.orders (id int PRIMARY KEY, status text);
         CREATE TABLE public.items (order_id int, sku text, PRIMARY KEY (order_id, sku));
         CREATE TABLE public.other (id int PRIMARY KEY);
         CREATE ROLE cdc LOGIN REPLICATION;
         GRANT SELECT ON public.orders, public.items TO cdc;
         CREATE PUBLICATION dba_pub FOR TABLE public.orders, public.items;",
    )
    .unwrap();
    assert_eq!(
        pg.psql(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, \
             pg_has_role('cdc', 'postgres', 'USAGE') FROM pg_roles WHERE rolname = 'cdc'"
        )
        .unwrap(),
        "f|f|f|t|f"
    );
    let mut p = Pipeline::with_url(
        &pg.url("cdc", "postgres"),
        "least",
        &["public.orders", "public.items"],
        "publication = \"dba_pub\"",
    );
    check_passes(&p);

    p.start();
    p.wait_streaming(&pg);
    pg.psql(
        "INSERT INTO public.orders VALUES (1, 'new');
         INSERT INTO public.other VALUES (1);
         BEGIN; UPDATE public.orders SET status = 'paid' WHERE id = 1;
                INSERT INTO public.items VALUES (1, 'A-1'); COMMIT;
         DELETE FROM public.items;",
    )
    .unwrap();
    let recs = p.wait_records(4);
    // Nothing else (public.other is not published) arrives.
    std::thread::sleep(Duration::from_millis(500));
    let recs_after = p.records();
    p.stop();
    assert_eq!(recs_after.len(), recs.len(), "{recs_after:?}");
    assert_eq!(ops(&recs), ["insert", "update", "insert", "delete"]);
    assert_eq!(
        recs.iter()
            .map(|r| r["table"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["orders", "orders", "items", "items"]
    );
    assert_eq!(
        recs[1]["after"],
        serde_json::json!({"id": 1, "status": "paid"})
    );

    // The DBA's publication is used as it is; the pipeline made none of its own.
    assert_eq!(publications(&pg), "dba_pub");
    assert_eq!(
        pg.psql(
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables \
             WHERE pubname = 'dba_pub'"
        )
        .unwrap(),
        "items,orders"
    );
    assert_eq!(slots(&pg), "sluice_least");

    // Teardown drops the slot, but never the DBA's publication.
    let out = sluice(&p, "teardown");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("dropped replication slot sluice_least"),
        "{all}"
    );
    assert!(!all.contains("dropped publication"), "{all}");
    assert_eq!(slots(&pg), "");
    assert_eq!(publications(&pg), "dba_pub");

    let out = sluice(&p, "teardown");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("nothing to drop"),
        "a second teardown has nothing to do:\n{}",
        text(&out)
    );
    assert_eq!(publications(&pg), "dba_pub");
}

#[test]
fn run_refuses_a_table_without_a_primary_key_and_creates_nothing() {
    let pg = PgServer::start().unwrap();
    pg.psql(&format!(
        "{ORDERS} CREATE TABLE public.events (at timestamptz, what text);"
    ))
    .unwrap();
    let p = Pipeline::new(&pg, "refuse", &["public.orders", "public.events"], "");
    let out = sluice(&p, "run");
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "run should refuse to start:\n{all}"
    );
    assert_failure(
        &all,
        &String::from_utf8_lossy(&out.stdout),
        "public.events has no primary key",
        "REPLICA IDENTITY FULL",
    );
    assert_eq!(slots(&pg), "", "no slot may be created:\n{all}");
    assert_eq!(
        publications(&pg),
        "",
        "no publication may be created:\n{all}"
    );
    assert!(p.records().is_empty());
}

#[test]
fn teardown_drops_the_pipelines_slot_and_publication_once() {
    let pg = PgServer::start().unwrap();
    pg.psql(&format!(
        "{ORDERS} CREATE PUBLICATION someone_elses FOR TABLE public.orders;
         SELECT pg_create_logical_replication_slot('someone_elses', 'pgoutput');"
    ))
    .unwrap();
    let mut p = Pipeline::new(&pg, "own", &["public.orders"], "");
    p.start();
    p.wait_streaming(&pg);
    pg.psql("INSERT INTO public.orders VALUES (1, 'new')")
        .unwrap();
    p.wait_records(1);
    assert_eq!(slots(&pg), "sluice_own,someone_elses");
    assert_eq!(publications(&pg), "sluice_own,someone_elses");

    // While the pipeline streams, teardown refuses and says why.
    let out = sluice(&p, "teardown");
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("stop the running pipeline first"), "{all}");
    assert_eq!(slots(&pg), "sluice_own,someone_elses");

    p.stop();
    let out = sluice(&p, "teardown");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("dropped replication slot sluice_own"), "{all}");
    assert!(all.contains("dropped publication sluice_own"), "{all}");
    assert_eq!(slots(&pg), "someone_elses");
    assert_eq!(publications(&pg), "someone_elses");

    let out = sluice(&p, "teardown");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("nothing to drop for pipeline own"), "{all}");
    assert!(!all.contains("dropped"), "{all}");
}

#[test]
fn a_schema_without_usage_is_reported() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "CREATE SCHEMA shop; CREATE TABLE shop.orders (id int PRIMARY KEY);
         CREATE ROLE nousage LOGIN REPLICATION; GRANT SELECT ON shop.orders TO nousage;
         CREATE PUBLICATION dba_pub FOR TABLE shop.orders;",
    )
    .unwrap();
    let p = Pipeline::with_url(
        &pg.url("nousage", "postgres"),
        "nousage",
        &["shop.orders"],
        "publication = \"dba_pub\"",
    );
    check_fails(
        &p,
        "nousage may not use schema shop",
        "GRANT USAGE ON SCHEMA \"shop\" TO \"nousage\"",
    );
    // The other checks still ran: the replication connection was tried.
    pg.psql("GRANT USAGE ON SCHEMA shop TO nousage").unwrap();
    check_passes(&p);
}

#[test]
fn teardown_right_after_a_crash_drops_the_slot() {
    // The dead instance's walsender lets go of the slot only a moment after the kill;
    // teardown waits for that instead of calling the slot busy.
    let pg = PgServer::start().unwrap();
    pg.psql(ORDERS).unwrap();
    for i in 0..10 {
        let name = format!("crash{i}");
        let mut p = Pipeline::new(&pg, &name, &["public.orders"], "");
        p.start();
        p.wait_streaming(&pg);
        p.kill9();
        let out = sluice(&p, "teardown");
        let all = text(&out);
        assert!(out.status.success(), "teardown #{i} failed:\n{all}");
        assert!(
            all.contains(&format!("dropped replication slot sluice_{name}")),
            "{all}"
        );
    }
    assert_eq!(slots(&pg), "");
    assert_eq!(publications(&pg), "");
}
