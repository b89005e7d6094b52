//! Real receivers on loopback for the notification and health tests: an HTTP server that
//! records what arrives (tiny_http), a TLS server with a certificate nobody trusts, and a
//! small SMTP server that speaks STARTTLS and AUTH PLAIN (rustls), recording every mail.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// What the receiver answers to the n-th request (0-based).
pub(crate) type Responder = Box<dyn Fn(usize, &Received) -> (u16, String, Duration) + Send + Sync>;

pub(crate) struct Http {
    pub port: u16,
    pub got: Arc<Mutex<Vec<Received>>>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Http {
    pub(crate) fn start(respond: Responder) -> Http {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
        let port = server.server_addr().to_ip().map_or(0, |a| a.port());
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (s, g) = (server.clone(), got.clone());
        let thread = std::thread::spawn(move || {
            let respond = Arc::new(respond);
            for mut req in s.incoming_requests() {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let r = Received {
                    method: req.method().to_string(),
                    path: req.url().to_owned(),
                    body,
                };
                let n = {
                    let mut all = g.lock().unwrap();
                    all.push(r.clone());
                    all.len() - 1
                };
                let respond = respond.clone();
                // Each answer on its own thread, so a slow one does not hold the others.
                std::thread::spawn(move || {
                    let (status, body, delay) = respond(n, &r);
                    std::thread::sleep(delay);
                    let header =
                        tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap();
                    let _ = req.respond(
                        tiny_http::Response::from_string(body)
                            .with_status_code(status)
                            .with_header(header),
                    );
                });
            }
        });
        Http {
            port,
            got,
            server,
            thread: Some(thread),
        }
    }

    /// Always the same answer.
    pub(crate) fn fixed(status: u16, body: &str) -> Http {
        let body = body.to_owned();
        Http::start(Box::new(move |_, _| (status, body.clone(), Duration::ZERO)))
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A CA and a leaf certificate for 127.0.0.1, written as PEM files.
pub(crate) struct Certs {
    /// Keeps the PEM files alive.
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub leaf_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

pub(crate) fn certs() -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    Certs {
        _dir: dir,
        ca: ca_path,
        leaf_der: leaf.der().to_vec(),
        key_der: leaf_key.serialize_der(),
    }
}

fn server_config(c: &Certs) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(c.leaf_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_der.clone())),
        )
        .unwrap();
    Arc::new(config)
}

/// An HTTPS server whose certificate is signed by a CA only the test knows.
pub(crate) fn untrusted_tls_server(c: &Certs) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = server_config(c);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(16) {
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut buf = [0u8; 1024];
                if tls.read(&mut buf).is_ok() {
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                }
            });
        }
    });
    port
}

/// A server that accepts connections and closes them without a word.
pub(crate) fn closing_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten().take(32) {
            drop(s);
        }
    });
    port
}

/// A port nothing listens on.
pub(crate) fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One mail as the SMTP server received it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    pub tls: bool,
    pub auth: Option<String>,
}

pub(crate) struct Smtp {
    pub port: u16,
    pub mails: Arc<Mutex<Vec<Mail>>>,
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// An SMTP server that offers STARTTLS (with `certs`) and AUTH PLAIN.
pub(crate) fn smtp(c: &Certs) -> Smtp {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
    let config = server_config(c);
    let store = mails.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(16) {
            let (config, store) = (config.clone(), store.clone());
            std::thread::spawn(move || {
                let _ = session(stream, &config, &store);
            });
        }
    });
    Smtp { port, mails }
}

fn session(
    stream: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    store: &Arc<Mutex<Vec<Mail>>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut io: Box<dyn Stream> = Box::new(stream.try_clone()?);
    let mut raw = Some(stream);
    let mut mail = Mail::default();
    io.write_all(b"220 test-smtp ESMTP\r\n")?;
    loop {
        let line = read_line(&mut io)?;
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            let tls_line = if mail.tls { "" } else { "250-STARTTLS\r\n" };
            io.write_all(
                format!("250-test-smtp\r\n{tls_line}250-AUTH PLAIN\r\n250 8BITMIME\r\n").as_bytes(),
            )?;
        } else if upper.starts_with("STARTTLS") {
            io.write_all(b"220 go ahead\r\n")?;
            let Some(tcp) = raw.take() else { return Ok(()) };
            let conn =
                rustls::ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
            io = Box::new(rustls::StreamOwned::new(conn, tcp));
            mail.tls = true;
        } else if upper.starts_with("AUTH PLAIN") {
            mail.auth = line.split_whitespace().nth(2).map(str::to_owned);
            io.write_all(b"235 ok\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            line[10..].trim().clone_into(&mut mail.from);
            io.write_all(b"250 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            mail.to.push(line[8..].trim().to_owned());
            io.write_all(b"250 ok\r\n")?;
        } else if upper.starts_with("DATA") {
            io.write_all(b"354 end with .\r\n")?;
            loop {
                let l = read_line(&mut io)?;
                if l == "." {
                    break;
                }
                mail.data.push_str(&l);
                mail.data.push('\n');
            }
            store.lock().unwrap().push(mail.clone());
            io.write_all(b"250 queued\r\n")?;
        } else if upper.starts_with("QUIT") {
            io.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            io.write_all(b"250 ok\r\n")?;
        }
    }
}

fn read_line(io: &mut Box<dyn Stream>) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = io.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let s = String::from_utf8_lossy(&line)
        .trim_end_matches('\r')
        .to_owned();
    Ok(s)
}

/// Starts `runbook run n -e dev` in `t`, waits until `receiver` holds a request (the
/// exchange is in flight), sends SIGINT, and returns the exit status and how long the
/// run took to end after the signal.
pub(crate) fn interrupt_once_received(
    t: &crate::harness::Test,
    receiver: &Http,
) -> (std::process::ExitStatus, std::time::Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use std::time::{Duration, Instant};
    let mut child = t
        .command()
        .args(["run", "n", "-e", "dev"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("runbook starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.received().is_empty() {
        if let Some(s) = child.try_wait().expect("wait") {
            panic!("the run ended ({s}) before its request reached the receiver");
        }
        assert!(Instant::now() < deadline, "the request never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = i32::try_from(child.id()).expect("a pid");
    kill(Pid::from_raw(pid), Signal::SIGINT).expect("SIGINT");
    let signalled = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return (s, signalled.elapsed());
        }
        if signalled.elapsed() > Duration::from_mins(1) {
            let _ = child.kill();
            panic!("the run did not end within 60 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
