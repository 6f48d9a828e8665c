//! The PostgreSQL frontend/backend protocol, version 3, as far as Sluice needs it: startup
//! (TLS negotiation, trust/cleartext/md5/SCRAM-SHA-256), the simple query protocol,
//! COPY BOTH for replication, COPY TO STDOUT and COPY FROM STDIN. Message encoding and
//! the SCRAM exchange come from `postgres-protocol`; framing is ours so that CopyData
//! frames are handed out as zero-copy `Bytes`.
//!
//! Invariants: a `Connection` is always at a message boundary between calls; every frame
//! length is checked before it is buffered; passwords are never logged.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conninfo::{ConnInfo, Host, SslMode};
use crate::error::{PgError, ServerError};
use crate::tls::TlsError;

/// Largest frame accepted from a server: PostgreSQL's own limit on a message is 1 GB.
const MAX_FRAME: usize = 1 << 30;
/// COPY FROM STDIN: bytes per CopyData message, and queued before they are sent.
const COPY_IN_CHUNK: usize = 256 * 1024;

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Result of one statement of a simple query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: String,
}

/// One frame read during COPY BOTH.
#[derive(Debug)]
pub enum CopyMessage {
    /// The payload of a CopyData message.
    Data(Bytes),
    /// The server ended the COPY (CopyDone); the command's completion follows.
    Done,
}

/// An open, authenticated connection.
pub struct Connection {
    io: Pin<Box<dyn Io>>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    params: HashMap<String, String>,
    backend_pid: i32,
    target: String,
}

/// `sslmode=prefer` fell back to plain text: harmless on this machine, but passwords and
/// rows cross the network readable to a remote host. Said once per target, not at every
/// reconnect.
fn warn_plain_text(host: &str, target: &str) {
    use std::sync::{Mutex, OnceLock};
    static WARNED: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if local {
        return;
    }
    let mut warned = WARNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if warned.insert(target.to_owned()) {
        tracing::warn!(
            %target,
            "postgres: the server does not accept TLS, so this connection is in plain text \
             (sslmode=prefer); enable ssl on the server, or set sslmode=require to refuse plain text"
        );
    }
}

impl Connection {
    /// Connects to the first reachable host of `info`. With `replication`, the session is a
    /// logical walsender (`replication=database`).
    pub async fn connect(info: &ConnInfo, replication: bool) -> Result<Connection, PgError> {
        let mut last = None;
        for (host, &port) in info.hosts.iter().zip(&info.ports) {
            match tokio::time::timeout(
                info.connect_timeout,
                Self::connect_host(info, host, port, replication),
            )
            .await
            {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(PgError::Connect {
                        target: format!("{host}:{port}"),
                        source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| PgError::Definite("no host to connect to".into())))
    }

    async fn connect_host(
        info: &ConnInfo,
        host: &Host,
        port: u16,
        replication: bool,
    ) -> Result<Connection, PgError> {
        let target = match host {
            Host::Tcp(h) => format!("{h}:{port}"),
            Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
        };
        let connect_err = |source| PgError::Connect {
            target: target.clone(),
            source,
        };
        let io: Pin<Box<dyn Io>> = match host {
            Host::Unix(_) => Box::pin(
                tokio::net::UnixStream::connect(&target)
                    .await
                    .map_err(connect_err)?,
            ),
            Host::Tcp(h) => {
                let mut tcp = tokio::net::TcpStream::connect((h.as_str(), port))
                    .await
                    .map_err(connect_err)?;
                tcp.set_nodelay(true)?;
                if info.sslmode == SslMode::Disable {
                    Box::pin(tcp)
                } else {
                    let mut buf = BytesMut::new();
                    frontend::ssl_request(&mut buf);
                    tcp.write_all(&buf).await?;
                    let answer = tcp.read_u8().await?;
                    match answer {
                        b'S' => {
                            let config = crate::tls::client_config(
                                info.sslmode,
                                info.sslrootcert.as_deref(),
                            )?;
                            let name = crate::tls::server_name(h)?;
                            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                                .connect(name, tcp)
                                .await
                                .map_err(|source| TlsError::Handshake {
                                    target: target.clone(),
                                    source,
                                })?;
                            Box::pin(tls)
                        }
                        b'N' if info.sslmode == SslMode::Prefer => {
                            warn_plain_text(h, &target);
                            Box::pin(tcp)
                        }
                        b'N' => {
                            return Err(TlsError::NotAccepted {
                                target: target.clone(),
                            }
                            .into())
                        }
                        other => {
                            return Err(PgError::Protocol(format!(
                                "unexpected answer {other:#x} to the TLS request"
                            )))
                        }
                    }
                }
            }
        };
        let mut conn = Connection {
            io,
            rbuf: BytesMut::with_capacity(128 * 1024),
            wbuf: BytesMut::with_capacity(1024),
            params: HashMap::new(),
            backend_pid: 0,
            target,
        };
        conn.startup(info, replication).await?;
        Ok(conn)
    }

    async fn startup(&mut self, info: &ConnInfo, replication: bool) -> Result<(), PgError> {
        // Fixed session settings make the text forms of values predictable for the decoder.
        let options = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres \
                       -c extra_float_digits=3 -c bytea_output=hex -c client_encoding=UTF8";
        let mut params = vec![
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("application_name", info.application_name.as_str()),
            ("client_encoding", "UTF8"),
            ("options", options),
        ];
        if replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)?;
        self.flush().await?;

        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = self.read_message().await?;
            match msg {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    let pw = self.password(info)?;
                    frontend::password_message(pw.as_bytes(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let pw = self.password(info)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        info.user.as_bytes(),
                        pw.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechs = Vec::new();
                    let mut it = body.mechanisms();
                    while let Some(m) = fallible_iterator::FallibleIterator::next(&mut it)? {
                        mechs.push(m.to_owned());
                    }
                    if !mechs.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(PgError::Auth(format!(
                            "the server offers only SASL mechanisms {mechs:?}; Sluice supports SCRAM-SHA-256"
                        )));
                    }
                    let pw = self.password(info)?;
                    // Channel binding is declined ("n"), which every server accepts.
                    let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)?;
                    self.flush().await?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        PgError::Protocol("SASL continue without SASL start".into())
                    })?;
                    s.update(body.data())
                        .map_err(|e| PgError::Auth(format!("SCRAM exchange failed: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| PgError::Protocol("SASL final without SASL start".into()))?;
                    s.finish(body.data()).map_err(|e| {
                        PgError::Auth(format!("server's SCRAM signature is wrong: {e}"))
                    })?;
                }
                backend::Message::AuthenticationGss
                | backend::Message::AuthenticationKerberosV5
                | backend::Message::AuthenticationSspi
                | backend::Message::AuthenticationScmCredential => return Err(PgError::Auth(
                    "the server asks for GSS/Kerberos/SSPI authentication, which Sluice does not \
                         support: configure md5 or scram-sha-256 for this user in pg_hba.conf"
                        .into(),
                )),
                backend::Message::BackendKeyData(body) => self.backend_pid = body.process_id(),
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ErrorResponse(body) => return Err(server_error(&body)),
                _ => {}
            }
        }
    }

    fn password(&self, info: &ConnInfo) -> Result<String, PgError> {
        info.password.clone().ok_or_else(|| {
            PgError::Auth(format!(
                "{} asks for a password for user {:?} and none was given: put it in the URL or PGPASSWORD",
                self.target, info.user
            ))
        })
    }

    /// The server's process id for this session.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// A run-time parameter the server reported (`server_version`, `integer_datetimes`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The server's major version number times 10000 (150004 for 15.4), from startup.
    pub fn server_version_num(&self) -> u32 {
        let v = self.parameter("server_version").unwrap_or("0");
        let mut parts = v.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        major.saturating_mul(10000).saturating_add(minor)
    }

    /// Runs `sql` through the simple query protocol; one result per statement.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<QueryResult>, PgError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut results = Vec::new();
        let mut current = QueryResult::default();
        let mut error = None;
        loop {
            match self.read_message().await? {
                backend::Message::RowDescription(body) => {
                    let mut fields = body.fields();
                    while let Some(f) = fallible_iterator::FallibleIterator::next(&mut fields)? {
                        current.columns.push(f.name().to_owned());
                    }
                }
                backend::Message::DataRow(body) => {
                    let buf = body.buffer();
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(r) = fallible_iterator::FallibleIterator::next(&mut ranges)? {
                        row.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    current.rows.push(row);
                }
                backend::Message::CommandComplete(body) => {
                    current.tag = body.tag()?.to_owned();
                    results.push(std::mem::take(&mut current));
                }
                backend::Message::EmptyQueryResponse => results.push(std::mem::take(&mut current)),
                backend::Message::ErrorResponse(body) => error = Some(server_error(&body)),
                backend::Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(results),
                    }
                }
                backend::Message::CopyInResponse(_) => {
                    frontend::copy_fail("COPY FROM STDIN is not supported here", &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::CopyOutResponse(_)
                | backend::Message::CopyData(_)
                | backend::Message::CopyDone => {}
                _ => {}
            }
        }
    }

    /// Runs one statement and returns its rows.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        Ok(self
            .simple_query(sql)
            .await?
            .pop()
            .map(|r| r.rows)
            .unwrap_or_default())
    }

    /// Runs statements whose results are not needed.
    pub async fn execute(&mut self, sql: &str) -> Result<(), PgError> {
        self.simple_query(sql).await.map(drop)
    }

    /// Sends `sql` (a START_REPLICATION) and waits until the server enters COPY BOTH.
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<(), PgError> {
        self.start_copy(sql, b'W').await
    }

    /// Sends `sql` (a `COPY ... TO STDOUT`) and waits until the server starts sending
    /// rows; read them with [`Connection::try_read_copy`] / [`Connection::read_copy`]
    /// until [`CopyMessage::Done`], then call [`Connection::finish_copy_out`].
    pub async fn start_copy_out(&mut self, sql: &str) -> Result<(), PgError> {
        self.start_copy(sql, b'H').await
    }

    /// After CopyDone: reads the command's completion, so the session is ready again.
    pub async fn finish_copy_out(&mut self) -> Result<(), PgError> {
        let mut error = None;
        loop {
            match self.read_message().await? {
                backend::Message::ErrorResponse(body) => error = Some(server_error(&body)),
                backend::Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(()),
                    }
                }
                _ => {}
            }
        }
    }

    /// Sends `sql` (a `COPY ... FROM STDIN`) and waits until the server asks for rows;
    /// send them with [`Connection::write_copy`], then end with
    /// [`Connection::finish_copy_in`].
    pub async fn start_copy_in(&mut self, sql: &str) -> Result<(), PgError> {
        self.start_copy(sql, b'G').await
    }

    /// During COPY FROM STDIN: queues `data` as CopyData messages, sending whenever a
    /// good amount is queued (the rest goes with [`Connection::finish_copy_in`]).
    pub async fn write_copy(&mut self, data: &[u8]) -> Result<(), PgError> {
        for chunk in data.chunks(COPY_IN_CHUNK) {
            frontend::CopyData::new(chunk)?.write(&mut self.wbuf);
            if self.wbuf.len() >= COPY_IN_CHUNK {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Ends COPY FROM STDIN and returns the command's tag (`COPY n`), or the server's
    /// error, which may have been raised while rows were still being sent (the server
    /// then ignores the rest of them). The session is ready again either way.
    pub async fn finish_copy_in(&mut self) -> Result<String, PgError> {
        frontend::copy_done(&mut self.wbuf);
        self.flush().await?;
        let mut tag = String::new();
        let mut error = None;
        loop {
            match self.read_message().await? {
                backend::Message::CommandComplete(body) => tag = body.tag()?.to_owned(),
                backend::Message::ErrorResponse(body) => error = Some(server_error(&body)),
                backend::Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(tag),
                    }
                }
                _ => {}
            }
        }
    }

    async fn start_copy(&mut self, sql: &str, response: u8) -> Result<(), PgError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        loop {
            let (tag, _) = self.frame_header().await?;
            if tag == response {
                self.take_frame().await?;
                return Ok(());
            }
            match self.read_message().await? {
                backend::Message::ErrorResponse(body) => {
                    let err = server_error(&body);
                    // Drain to ReadyForQuery so the session stays usable.
                    while !matches!(
                        self.read_message().await?,
                        backend::Message::ReadyForQuery(_)
                    ) {}
                    return Err(err);
                }
                backend::Message::ReadyForQuery(_) => {
                    return Err(PgError::Protocol(format!(
                        "server did not enter COPY mode for: {}",
                        sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
                    )))
                }
                _ => {}
            }
        }
    }

    /// Reads the next CopyData payload during COPY BOTH.
    pub async fn read_copy(&mut self) -> Result<CopyMessage, PgError> {
        loop {
            if let Some(m) = self.try_read_copy()? {
                return Ok(m);
            }
            self.fill_buffer().await?;
        }
    }

    /// Like [`Connection::read_copy`], but only from what is already buffered: `None` when
    /// no whole frame is buffered. Lets the caller tell a busy stream from an idle one.
    pub fn try_read_copy(&mut self) -> Result<Option<CopyMessage>, PgError> {
        loop {
            let Some((tag, len)) = peek_header(&self.rbuf)? else {
                return Ok(None);
            };
            if self.rbuf.len() < 1 + len {
                self.rbuf.reserve(1 + len - self.rbuf.len());
                return Ok(None);
            }
            match tag {
                b'd' => {
                    let mut frame = self.rbuf.split_to(1 + len).freeze();
                    frame.advance(5);
                    return Ok(Some(CopyMessage::Data(frame)));
                }
                b'c' => {
                    self.rbuf.advance(1 + len);
                    return Ok(Some(CopyMessage::Done));
                }
                _ => match backend::Message::parse(&mut self.rbuf)? {
                    Some(backend::Message::ErrorResponse(body)) => return Err(server_error(&body)),
                    Some(backend::Message::ParameterStatus(body)) => {
                        self.params
                            .insert(body.name()?.to_owned(), body.value()?.to_owned());
                    }
                    Some(backend::Message::NoticeResponse(body)) => {
                        // Every message Sluice does not act on is said, with its type.
                        let e = error_fields(body.fields());
                        tracing::warn!(message_type = "NoticeResponse", notice = %e, "postgres: notice during replication");
                    }
                    None => {}
                    Some(_) => {
                        tracing::warn!(tag = %(tag as char), "skipping unexpected message during replication");
                    }
                },
            }
        }
    }

    /// Sends one CopyData message and flushes it.
    pub async fn send_copy(&mut self, payload: &[u8]) -> Result<(), PgError> {
        frontend::CopyData::new(payload)?.write(&mut self.wbuf);
        self.flush().await
    }

    /// Ends COPY BOTH from our side.
    pub async fn send_copy_done(&mut self) -> Result<(), PgError> {
        frontend::copy_done(&mut self.wbuf);
        self.flush().await
    }

    /// Says goodbye; errors are irrelevant at that point.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }

    async fn flush(&mut self) -> Result<(), PgError> {
        self.io.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        self.io.flush().await?;
        Ok(())
    }

    /// Reads what the socket holds right now, without waiting: false when it holds
    /// nothing (the stream is idle at this moment).
    pub fn fill_buffer_now(&mut self) -> Result<bool, PgError> {
        use std::future::Future;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let fill = std::pin::pin!(self.fill_buffer());
        match fill.poll(&mut cx) {
            std::task::Poll::Ready(r) => r.map(|()| true),
            // Dropping the pending read is safe: read_buf is cancel-safe.
            std::task::Poll::Pending => Ok(false),
        }
    }

    /// Reads more bytes from the server into the buffer (cancel-safe).
    pub async fn fill_buffer(&mut self) -> Result<(), PgError> {
        if self.rbuf.capacity() - self.rbuf.len() < 32 * 1024 {
            self.rbuf.reserve(128 * 1024);
        }
        let n = self.io.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(PgError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} closed the connection", self.target),
            )));
        }
        Ok(())
    }

    async fn frame_header(&mut self) -> Result<(u8, usize), PgError> {
        loop {
            if let Some(h) = peek_header(&self.rbuf)? {
                return Ok(h);
            }
            self.fill_buffer().await?;
        }
    }

    async fn take_frame(&mut self) -> Result<Bytes, PgError> {
        let (_, len) = self.frame_header().await?;
        while self.rbuf.len() < 1 + len {
            self.rbuf.reserve(1 + len - self.rbuf.len());
            self.fill_buffer().await?;
        }
        Ok(self.rbuf.split_to(1 + len).freeze())
    }

    /// Reads one whole message that `postgres-protocol` can parse, recording
    /// ParameterStatus and skipping notices.
    async fn read_message(&mut self) -> Result<backend::Message, PgError> {
        loop {
            let (tag, len) = self.frame_header().await?;
            while self.rbuf.len() < 1 + len {
                self.rbuf.reserve(1 + len - self.rbuf.len());
                self.fill_buffer().await?;
            }
            if tag == b'W' {
                return Err(PgError::Protocol("unexpected COPY BOTH response".into()));
            }
            match backend::Message::parse(&mut self.rbuf)? {
                Some(backend::Message::ParameterStatus(body)) => {
                    self.params
                        .insert(body.name()?.to_owned(), body.value()?.to_owned());
                }
                Some(backend::Message::NoticeResponse(_)) => {}
                Some(m) => return Ok(m),
                None => return Err(PgError::Protocol("incomplete message after framing".into())),
            }
        }
    }
}

fn peek_header(buf: &[u8]) -> Result<Option<(u8, usize)>, PgError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > MAX_FRAME {
        return Err(PgError::Protocol(format!("invalid message length {len}")));
    }
    Ok(Some((buf[0], len as usize)))
}

fn server_error(body: &backend::ErrorResponseBody) -> PgError {
    error_fields(body.fields())
}

/// An error or notice's fields as a server error (the notice's severity says which).
fn error_fields(mut fields: backend::ErrorFields<'_>) -> PgError {
    let mut e = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    while let Ok(Some(f)) = fallible_iterator::FallibleIterator::next(&mut fields) {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    PgError::Server(e)
}

/// Quotes an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal. Backslashes are doubled and the literal is written with
/// `E''` so the result is right whatever `standard_conforming_strings` is.
pub fn quote_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}
