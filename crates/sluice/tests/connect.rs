//! End to end: Sluice connects the way libpq would (md5, SCRAM-SHA-256 and cleartext
//! passwords, TLS with libpq's sslmode semantics, Unix sockets) and streams a change; and
//! when it cannot connect, `sluice check` says why, with a non-zero exit code.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn sluice(p: &Pipeline, sub: &str) -> Output {
    p.command(sub)
}

fn text(out: &Output) -> String {
    output_text(out)
}

/// `sluice check` fails (non-zero exit) and its output mentions every one of `needles`
/// (case-insensitive).
fn check_fails_with(p: &Pipeline, needles: &[&str]) -> String {
    let out = sluice(p, "check");
    let all = text(&out);
    assert!(!out.status.success(), "check should fail:\n{all}");
    assert_eq!(out.status.code(), Some(2), "{all}");
    let lower = all.to_lowercase();
    for n in needles {
        assert!(
            lower.contains(&n.to_lowercase()),
            "check output should mention {n:?}:\n{all}"
        );
    }
    all
}

/// Creates `public.<table>`, checks that `url` passes preflight, runs the pipeline with it
/// and waits for one inserted row to arrive in the file sink.
fn streams_an_insert(pg: &PgServer, url: &str, name: &str) {
    pg.psql(&format!(
        "CREATE TABLE public.{name} (id int PRIMARY KEY, note text)"
    ))
    .unwrap();
    let table = format!("public.{name}");
    let mut p = Pipeline::with_url(url, name, &[&table], "");
    let out = sluice(&p, "check");
    assert!(
        out.status.success(),
        "check should pass for {name}:\n{}",
        text(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));

    p.start();
    p.wait_streaming(pg);
    pg.psql(&format!("INSERT INTO public.{name} VALUES (1, 'hello')"))
        .unwrap();
    let recs = p.wait_records(1);
    p.stop();
    assert_eq!(ops(&recs), ["insert"], "{recs:?}");
    assert_eq!(recs[0]["table"], name);
    assert_eq!(
        recs[0]["after"],
        serde_json::json!({"id": 1, "note": "hello"})
    );
}

/// The url with `extra` query parameters appended.
fn with_query(url: &str, extra: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{extra}")
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_owned()
}

#[test]
fn md5_password_user_streams() {
    let pg = PgServer::builder()
        .hba("host all md5user 127.0.0.1/32 md5")
        .start()
        .unwrap();
    pg.psql(
        "SET password_encryption = 'md5';
         CREATE ROLE md5user LOGIN SUPERUSER PASSWORD 'md5-secret';",
    )
    .unwrap();
    // The stored verifier is md5, so the server really runs the md5 exchange.
    assert_eq!(
        pg.psql("SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'md5user'")
            .unwrap(),
        "md5"
    );
    streams_an_insert(
        &pg,
        &pg.url_with_password("md5user", "md5-secret", "postgres"),
        "md5_orders",
    );
}

#[test]
fn scram_password_user_streams() {
    let pg = PgServer::builder()
        .hba("host all scramuser 127.0.0.1/32 scram-sha-256")
        .start()
        .unwrap();
    pg.psql(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE scramuser LOGIN SUPERUSER PASSWORD 'scram-secret';",
    )
    .unwrap();
    assert_eq!(
        pg.psql("SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = 'scramuser'")
            .unwrap(),
        "SCRAM-SHA-256"
    );
    streams_an_insert(
        &pg,
        &pg.url_with_password("scramuser", "scram-secret", "postgres"),
        "scram_orders",
    );
}

#[test]
fn cleartext_password_from_the_url_with_reserved_characters_streams() {
    // `password` sends the password itself: what the server receives is exactly what the
    // URL decoded to, so percent-decoding mistakes show up as an authentication failure.
    let pg = PgServer::builder()
        .hba("host all plainuser 127.0.0.1/32 password")
        .start()
        .unwrap();
    let password = "p@ss:w/rd?&=% é";
    pg.psql(&format!(
        "CREATE ROLE plainuser LOGIN SUPERUSER PASSWORD '{password}';"
    ))
    .unwrap();
    let url = pg.url_with_password("plainuser", password, "postgres");
    assert!(url.contains("%40"), "{url}");
    streams_an_insert(&pg, &url, "plain_orders");
}

#[test]
fn wrong_password_is_reported_by_check() {
    let pg = PgServer::builder()
        .hba("host all md5user 127.0.0.1/32 md5")
        .hba("host all scramuser 127.0.0.1/32 scram-sha-256")
        .start()
        .unwrap();
    pg.psql(
        "SET password_encryption = 'md5';
         CREATE ROLE md5user LOGIN SUPERUSER PASSWORD 'right';
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE scramuser LOGIN SUPERUSER PASSWORD 'right';
         CREATE TABLE public.t (id int PRIMARY KEY);",
    )
    .unwrap();
    for user in ["md5user", "scramuser"] {
        let p = Pipeline::with_url(
            &pg.url_with_password(user, "wrong", "postgres"),
            "wrongpw",
            &["public.t"],
            "",
        );
        let all = check_fails_with(&p, &["password authentication failed", user]);
        assert!(all.contains("FAIL"), "{all}");
        assert!(all.contains("fix:"), "{all}");
        // The password itself is never echoed.
        assert!(!all.contains(":wrong"), "{all}");

        // `run` refuses to start the same way, without leaving a slot behind.
        let out = sluice(&p, "run");
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains("password authentication failed"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0"
    );
}

#[test]
fn missing_password_for_a_scram_user_is_reported_by_check() {
    let pg = PgServer::builder()
        .hba("host all scramuser 127.0.0.1/32 scram-sha-256")
        .start()
        .unwrap();
    pg.psql(
        "CREATE ROLE scramuser LOGIN SUPERUSER PASSWORD 'scram-secret';
         CREATE TABLE public.t (id int PRIMARY KEY);",
    )
    .unwrap();
    let p = Pipeline::with_url(&pg.url("scramuser", "postgres"), "nopw", &["public.t"], "");
    let all = check_fails_with(&p, &["password", "scramuser"]);
    let lower = all.to_lowercase();
    assert!(
        [
            "none was given",
            "no password",
            "needs a password",
            "password is required"
        ]
        .iter()
        .any(|n| lower.contains(n)),
        "check should say that a password is needed:\n{all}"
    );
}

/// A server with TLS on, where `tlsuser` may connect over TLS only.
fn tls_server() -> PgServer {
    let pg = PgServer::builder()
        .ssl(true)
        .hba("hostssl all tlsuser 127.0.0.1/32 trust")
        .hba("hostnossl all tlsuser 127.0.0.1/32 reject")
        .start()
        .unwrap();
    pg.psql("CREATE ROLE tlsuser LOGIN SUPERUSER").unwrap();
    pg
}

fn ca_path(pg: &PgServer) -> String {
    path_str(pg.ca_cert_path().expect("server built with ssl"))
}

#[test]
fn tls_require_streams_over_tls() {
    let pg = tls_server();
    // Without TLS this user is rejected, so streaming proves the connection was encrypted.
    let plain = Pipeline::with_url(
        &with_query(&pg.url("tlsuser", "postgres"), "sslmode=disable"),
        "plain",
        &["public.x"],
        "",
    );
    check_fails_with(&plain, &["no encryption"]);

    let url = with_query(&pg.url("tlsuser", "postgres"), "sslmode=require");
    streams_an_insert(&pg, &url, "tls_require");
}

#[test]
fn tls_verify_full_to_localhost_streams() {
    let pg = tls_server();
    let url = format!(
        "postgres://tlsuser@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        ca_path(&pg)
    );
    streams_an_insert(&pg, &url, "tls_verify_full");
}

#[test]
fn tls_verify_ca_to_an_ip_address_streams() {
    let pg = tls_server();
    let url = with_query(
        &pg.url("tlsuser", "postgres"),
        &format!("sslmode=verify-ca&sslrootcert={}", ca_path(&pg)),
    );
    streams_an_insert(&pg, &url, "tls_verify_ca");
}

#[test]
fn tls_host_name_is_checked_by_verify_full_only() {
    // A certificate signed by the trusted CA, but for another name than the one
    // connected by (127.0.0.1): verify-full must refuse it, verify-ca accept it.
    let pg = PgServer::builder()
        .ssl_names("DNS:db.example")
        .hba("hostssl all tlsuser 127.0.0.1/32 trust")
        .start()
        .unwrap();
    pg.psql("CREATE ROLE tlsuser LOGIN SUPERUSER; CREATE TABLE public.t (id int PRIMARY KEY)")
        .unwrap();
    let url = |mode: &str| {
        with_query(
            &pg.url("tlsuser", "postgres"),
            &format!("sslmode={mode}&sslrootcert={}", ca_path(&pg)),
        )
    };
    let p = Pipeline::with_url(&url("verify-full"), "wrongname", &["public.t"], "");
    check_fails_with(&p, &["certificate"]);
    let p = Pipeline::with_url(&url("verify-ca"), "rightca", &["public.t"], "");
    let out = sluice(&p, "check");
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn tls_verify_full_with_a_foreign_ca_fails() {
    let pg = tls_server();
    pg.psql("CREATE TABLE public.t (id int PRIMARY KEY)")
        .unwrap();
    // Another CA, which did not sign the server's certificate.
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("openssl")
        .current_dir(dir.path())
        .args(["req", "-x509", "-new", "-nodes", "-days", "30"])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-subj", "/CN=Some other CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .args(["-keyout", "other.key", "-out", "other.crt"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl failed");
    let other_ca = path_str(&dir.path().join("other.crt"));
    let url = format!(
        "postgres://tlsuser@localhost:{}/postgres?sslmode=verify-full&sslrootcert={other_ca}",
        pg.port()
    );
    let p = Pipeline::with_url(&url, "foreignca", &["public.t"], "");
    let all = check_fails_with(&p, &["certificate"]);
    assert!(
        all.contains("UnknownIssuer") || all.to_lowercase().contains("issuer"),
        "the message should say the issuer is unknown:\n{all}"
    );

    // A missing sslrootcert file is named as such.
    let url = format!(
        "postgres://tlsuser@localhost:{}/postgres?sslmode=verify-full&sslrootcert=/nonexistent/root.crt",
        pg.port()
    );
    let p = Pipeline::with_url(&url, "nocafile", &["public.t"], "");
    check_fails_with(&p, &["/nonexistent/root.crt"]);
}

#[test]
fn tls_required_against_a_server_without_tls_fails() {
    let pg = PgServer::start().unwrap();
    pg.psql("CREATE TABLE public.t (id int PRIMARY KEY)")
        .unwrap();
    let url = with_query(&pg.url("postgres", "postgres"), "sslmode=require");
    let p = Pipeline::with_url(&url, "notls", &["public.t"], "");
    check_fails_with(&p, &["does not accept TLS", "sslmode"]);
}

#[test]
fn an_unreachable_port_fails_with_the_address() {
    let port = sluice_testkit::free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=5");
    let p = Pipeline::with_url(&url, "unreachable", &["public.t"], "");
    let started = Instant::now();
    check_fails_with(&p, &["cannot connect", &format!("127.0.0.1:{port}")]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn unix_socket_connection_streams() {
    // sockuser is refused over TCP, so streaming proves the socket was used.
    let pg = PgServer::builder()
        .hba("host all sockuser 127.0.0.1/32 reject")
        .start()
        .unwrap();
    pg.psql("CREATE ROLE sockuser LOGIN SUPERUSER").unwrap();
    let url = format!(
        "postgres:///postgres?host={}&port={}&user=sockuser",
        path_str(pg.socket_dir()),
        pg.port()
    );
    streams_an_insert(&pg, &url, "unix_orders");
}

#[test]
fn scram_over_verified_tls_streams() {
    // Over TLS the server also offers SCRAM-SHA-256-PLUS (channel binding).
    let pg = PgServer::builder()
        .ssl(true)
        .hba("hostssl all scramuser 127.0.0.1/32 scram-sha-256")
        .hba("hostnossl all scramuser 127.0.0.1/32 reject")
        .start()
        .unwrap();
    pg.psql("CREATE ROLE scramuser LOGIN SUPERUSER PASSWORD 'scram-secret';")
        .unwrap();
    let url = format!(
        "postgres://scramuser:scram-secret@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        ca_path(&pg)
    );
    streams_an_insert(&pg, &url, "scram_tls");
}

#[test]
fn a_second_host_with_its_own_port_is_tried_when_the_first_is_down() {
    let pg = PgServer::start().unwrap();
    let dead = sluice_testkit::free_port();
    // libpq semantics: the n-th port belongs to the n-th host.
    let url = format!(
        "postgres://postgres@127.0.0.1:{dead},127.0.0.1:{}/postgres",
        pg.port()
    );
    streams_an_insert(&pg, &url, "failover");
}
