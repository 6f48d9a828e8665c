//! COPY FROM STDIN against a real server: rows in text and binary format arrive, a bad
//! row fails the COPY with the server's error, and the session is usable afterwards.

use sluice_pgtemp::PgServer;
use sluice_pgwire::{ConnInfo, Connection};

fn connect(pg: &PgServer) -> (tokio::runtime::Runtime, Connection) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let info = ConnInfo::parse_with_env(&pg.url("postgres", "postgres"), |_| None).unwrap();
    let conn = rt.block_on(Connection::connect(&info, false)).unwrap();
    (rt, conn)
}

/// One binary COPY row of (int4, text): field count, then length-prefixed fields.
fn binary_row(out: &mut Vec<u8>, id: i32, text: Option<&str>) {
    out.extend_from_slice(&2i16.to_be_bytes());
    out.extend_from_slice(&4i32.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    match text {
        Some(t) => {
            out.extend_from_slice(&(t.len() as i32).to_be_bytes());
            out.extend_from_slice(t.as_bytes());
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

#[test]
fn rows_copied_in_arrive_and_a_bad_copy_leaves_the_session_usable() {
    let pg = PgServer::start().unwrap();
    let (rt, mut conn) = connect(&pg);
    rt.block_on(async {
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            .await
            .unwrap();
        // Text format, in pieces that do not follow line boundaries.
        conn.start_copy_in("COPY t FROM STDIN").await.unwrap();
        conn.write_copy(b"1\tone\n2\t").await.unwrap();
        conn.write_copy(b"\\N\n").await.unwrap();
        assert_eq!(conn.finish_copy_in().await.unwrap(), "COPY 2");

        // Binary format, larger than one CopyData message.
        let mut data = b"PGCOPY\n\xff\r\n\0".to_vec();
        data.extend_from_slice(&[0; 8]);
        let long = "x".repeat(1000);
        for id in 3..1003 {
            binary_row(&mut data, id, Some(&long));
        }
        data.extend_from_slice(&(-1i16).to_be_bytes());
        assert!(data.len() > 512 * 1024);
        conn.start_copy_in("COPY t FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        conn.write_copy(&data).await.unwrap();
        assert_eq!(conn.finish_copy_in().await.unwrap(), "COPY 1000");

        // A duplicate key fails the COPY; the session goes on.
        conn.start_copy_in("COPY t FROM STDIN").await.unwrap();
        conn.write_copy(b"1\tagain\n").await.unwrap();
        let err = conn.finish_copy_in().await.unwrap_err();
        assert_eq!(err.code(), Some("23505"), "{err}");
        // A COPY that cannot start says why.
        let err = conn
            .start_copy_in("COPY nope FROM STDIN")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("42P01"), "{err}");

        let rows = conn
            .query("SELECT count(*), count(v), sum(length(v)) FROM t")
            .await
            .unwrap();
        assert_eq!(
            rows,
            vec![vec![
                Some("1002".to_owned()),
                Some("1001".to_owned()),
                Some("1000003".to_owned())
            ]]
        );
    });
    rt.block_on(conn.close());
}
