//! End-to-end checks of the private PostgreSQL servers, against real servers.

use std::net::TcpStream;
use std::process::Command;

use sluice_pgtemp::{pg_bin, PgServer};

#[test]
fn default_server_is_ready_for_logical_replication() {
    let pg = PgServer::start().unwrap();
    assert_eq!(pg.psql("SHOW wal_level").unwrap(), "logical");
    assert_eq!(pg.psql("SHOW fsync").unwrap(), "on");
    assert_eq!(pg.psql("SHOW max_replication_slots").unwrap(), "20");
    assert_eq!(pg.psql("SHOW server_encoding").unwrap(), "UTF8");
    assert_eq!(pg.host(), "127.0.0.1");
    assert_ne!(pg.port(), 5432);
    assert_eq!(
        pg.url("postgres", "postgres"),
        format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port())
    );
    assert!(pg
        .socket_dir()
        .join(format!(".s.PGSQL.{}", pg.port()))
        .exists());
    assert!(pg.data_dir().join("PG_VERSION").exists());
    assert!(pg.pid().is_some());

    // Several statements, the last one's rows are the output.
    let out = pg
        .psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'); SELECT id, v FROM t ORDER BY id")
        .unwrap();
    assert_eq!(out, "1|a\n2|b");

    // The first failing statement stops the script and is reported.
    let err = pg
        .psql("SELECT 1; SELECT * FROM missing_table; SELECT 2")
        .unwrap_err();
    assert!(err.to_string().contains("missing_table"), "{err}");

    pg.create_database("other db").unwrap();
    assert_eq!(
        pg.psql_db("other db", "SELECT current_database()").unwrap(),
        "other db"
    );

    // Programs from the same installation, e.g. for pg_recvlogical-based tests.
    let version = Command::new(pg_bin("pg_recvlogical"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success());

    let dir = pg.socket_dir().to_owned();
    let port = pg.port();
    drop(pg);
    assert!(!dir.exists(), "the temporary directory is removed on drop");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server is stopped on drop"
    );
}

#[test]
fn hba_lines_can_require_scram() {
    let pg = PgServer::builder()
        .hba("host all alice 127.0.0.1/32 scram-sha-256")
        .start()
        .unwrap();
    pg.psql("CREATE ROLE alice LOGIN PASSWORD 's3cret:@/'")
        .unwrap();
    assert!(pg
        .psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'")
        .unwrap()
        .starts_with("SCRAM-SHA-256$"));

    assert_eq!(
        pg.psql_as(
            "alice",
            Some("s3cret:@/"),
            "postgres",
            "SELECT current_user"
        )
        .unwrap(),
        "alice"
    );
    let wrong = pg
        .psql_as("alice", Some("wrong"), "postgres", "SELECT 1")
        .unwrap_err();
    assert!(
        wrong.to_string().contains("password authentication failed"),
        "{wrong}"
    );
    let missing = pg
        .psql_as("alice", None, "postgres", "SELECT 1")
        .unwrap_err();
    assert!(missing.to_string().contains("password"), "{missing}");
    // Other users still get the default trust lines.
    assert_eq!(pg.psql("SELECT current_user").unwrap(), "postgres");
    assert_eq!(
        pg.url_with_password("alice", "s3cret:@/", "postgres"),
        format!(
            "postgres://alice:s3cret%3A%40%2F@127.0.0.1:{}/postgres",
            pg.port()
        )
    );
}

#[test]
fn restart_and_crash_keep_committed_data() {
    let pg = PgServer::start().unwrap();
    let port = pg.port();
    pg.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .unwrap();

    pg.restart().unwrap();
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("SELECT count(*) FROM t").unwrap(), "1");

    pg.stop().unwrap();
    assert_eq!(pg.pid(), None);
    assert!(pg.psql("SELECT 1").is_err());
    pg.start_again().unwrap();

    // The port stays reserved for this server: a squatter makes the restart fail clearly.
    pg.stop().unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let err = pg.start_again().unwrap_err();
    assert!(
        format!("{err:#}").contains("taken by another process"),
        "{err:#}"
    );
    drop(squatter);
    pg.start_again().unwrap();

    pg.psql("INSERT INTO t VALUES (2)").unwrap();
    let old_pid = pg.pid().unwrap();
    pg.kill9().unwrap();
    assert_eq!(pg.pid(), None);
    assert!(pg.psql("SELECT 1").is_err());
    pg.start_again().unwrap();
    assert_ne!(pg.pid(), Some(old_pid));
    assert_eq!(pg.psql("SELECT count(*) FROM t").unwrap(), "2");
    let log = std::fs::read_to_string(pg.log_path()).unwrap();
    assert!(log.contains("not properly shut down"), "crash recovery ran");
}

#[test]
fn ssl_server_offers_a_verifiable_certificate() {
    let pg = PgServer::builder()
        .ssl(true)
        .setting("fsync", "off")
        .start()
        .unwrap();
    assert_eq!(pg.psql("SHOW ssl").unwrap(), "on");
    assert_eq!(pg.psql("SHOW fsync").unwrap(), "off");
    let ca = pg.ca_cert_path().expect("a CA with .ssl(true)");
    assert!(ca.exists());

    // verify-full checks the chain against our CA and the host name against the SANs.
    for host in ["127.0.0.1", "localhost"] {
        let out = Command::new(pg_bin("psql"))
            .args(["-X", "-A", "-t", "-w", "-c"])
            .arg("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .arg(format!(
                "host={host} port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
                pg.port(),
                ca.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
    }
}

#[test]
fn servers_are_independent() {
    let a = PgServer::start().unwrap();
    let b = PgServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    a.psql("CREATE TABLE only_in_a ()").unwrap();
    assert!(b.psql("SELECT * FROM only_in_a").is_err());
    assert!(PgServer::builder()
        .ssl(false)
        .start()
        .unwrap()
        .ca_cert_path()
        .is_none());
}
