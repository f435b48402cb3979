//! TLS options (issue 4), against a local rustls server whose CA is generated in the test
//! with `rcgen`: an added root is trusted, an unknown CA or a wrong host name is a typed
//! TLS error, the verification opt-out connects anyway, client certificates work, bad PEM
//! is refused synchronously, and `wss://` against a plain server fails fast.
//!
//! The helpers ([`pki`], [`server_config`], [`tls_server`]) serve the redirect tests too.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nwebsocket::{Error, Event, HandshakeErrorKind, ReadyState, TlsErrorKind, WebSocket};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

use crate::support::*;

pub type TlsStream = StreamOwned<ServerConnection, TcpStream>;

/// A certificate and its key, PEM and DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

/// A test CA and the certificates it signed, made once per process.
pub struct Pki {
    pub ca_pem: String,
    ca_der: Vec<u8>,
    /// Server certificate for `localhost` (and 127.0.0.1).
    pub localhost: Leaf,
    /// Server certificate for `wrong.example` only.
    pub wrong_name: Leaf,
    /// Client certificate (clientAuth), CN "test client".
    pub client: Leaf,
    /// A certificate for `localhost` from another CA, which nobody trusts.
    pub stranger: Leaf,
}

fn make_ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("test certificate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("test certificate");
    let cert = params.self_signed(&key).expect("test certificate");
    (cert, key)
}

fn make_leaf(
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> Leaf {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("test certificate");
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("test client"),
    );
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().expect("test certificate");
    let cert = params
        .signed_by(&key, ca, ca_key)
        .expect("test certificate");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let (ca, ca_key) = make_ca("nwebsocket test CA");
        let (other_ca, other_key) = make_ca("untrusted test CA");
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        Pki {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            localhost: make_leaf(&["localhost", "127.0.0.1"], ServerAuth, &ca, &ca_key),
            wrong_name: make_leaf(&["wrong.example"], ServerAuth, &ca, &ca_key),
            client: make_leaf(&[], ClientAuth, &ca, &ca_key),
            stranger: make_leaf(&["localhost"], ServerAuth, &other_ca, &other_key),
        }
    })
}

#[allow(deprecated)] // rustls 0.23.48: see `ring_provider` in src/io/transport.rs
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config presenting `leaf`; with `require_client_cert`, clients must present a
/// certificate from the test CA.
pub fn server_config(leaf: &Leaf, require_client_cert: bool) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("server TLS config");
    let builder = if require_client_cert {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(pki().ca_der.clone()))
            .expect("server TLS config");
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .expect("server TLS config");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let chain = vec![CertificateDer::from(leaf.cert_der.clone())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone()));
    Arc::new(
        builder
            .with_single_cert(chain, key)
            .expect("server TLS config"),
    )
}

/// A one-connection TLS server: `body` gets the (not yet handshaken) TLS stream.
pub fn tls_server<T, F>(config: Arc<ServerConfig>, body: F) -> Server<T>
where
    T: Send + 'static,
    F: FnOnce(TlsStream) -> T + Send + 'static,
{
    raw_server(move |tcp| {
        let conn = ServerConnection::new(config).expect("server: TLS connection");
        body(StreamOwned::new(conn, tcp))
    })
}

/// What the echoing TLS server saw: the handshake's outcome, then how many messages it
/// echoed and how many client certificates it was shown.
#[derive(Debug)]
pub struct EchoReport {
    pub echoed: usize,
    pub client_certs: usize,
}

/// A TLS WebSocket server echoing text and binary until the client closes; `Err` with the
/// reason if the TLS or WebSocket handshake failed.
pub fn tls_echo_server(config: Arc<ServerConfig>) -> Server<Result<EchoReport, String>> {
    tls_server(config, |tls| {
        let mut ws = tungstenite::accept(tls).map_err(|e| e.to_string())?;
        let client_certs = ws.get_ref().conn.peer_certificates().map_or(0, |c| c.len());
        let mut echoed = 0;
        loop {
            match ws.read() {
                Ok(m @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_))) => {
                    ws.send(m).map_err(|e| e.to_string())?;
                    echoed += 1;
                }
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => return Err(format!("after {echoed} echoes: {e}")),
            }
        }
        // End TLS properly, then TCP.
        let stream = ws.get_mut();
        stream.conn.send_close_notify();
        let _ = stream.flush();
        Ok(EchoReport {
            echoed,
            client_certs,
        })
    })
}

pub fn wss_url(port: u16) -> String {
    format!("wss://localhost:{port}/tls?q=1")
}

/// Sends text and binary over `ws`, expects both back, closes cleanly.
fn echo_round_trip(ws: WebSocket, events: &nwebsocket::Events) {
    assert!(matches!(next_event(events), Event::Open));
    assert_eq!(ws.ready_state(), ReadyState::Open);
    ws.send("over TLS").expect("send");
    ws.send(vec![0u8, 1, 2, 255]).expect("send");
    let e = next_event(events);
    assert!(
        matches!(&e, Event::Message(m) if m.as_text() == Some("over TLS")),
        "{e:?}"
    );
    let e = next_event(events);
    assert!(
        matches!(&e, Event::Message(m) if m.as_bytes() == [0u8, 1, 2, 255]),
        "{e:?}"
    );
    ws.close();
    let evs = events_until_close(events);
    assert!(
        matches!(evs.as_slice(), [Event::Close(c)] if c.code == 1000 && c.was_clean),
        "{evs:?}"
    );
    drop(ws);
    assert!(leftover_events(events).is_empty());
}

/// The whole chain of a TLS error, lower case (the TLS library's words are its source).
fn tls_message(e: &Error) -> String {
    match e {
        Error::Tls { .. } => e.chain().to_lowercase(),
        other => panic!("expected Error::Tls, got {other:?}"),
    }
}

#[test]
fn added_root_certificate_is_trusted_and_messages_echo() {
    let _g = shared();
    let server = tls_echo_server(server_config(&pki().localhost, false));
    let (ws, events) = WebSocket::builder()
        .add_root_certificate(&pki().ca_pem)
        .connect_pull(&wss_url(server.port()))
        .expect("wss connect with the test CA trusted");
    assert_eq!(ws.url(), wss_url(server.port()));
    echo_round_trip(ws, &events);
    let report = server.join().expect("server");
    assert_eq!(report.echoed, 2);
    assert_eq!(report.client_certs, 0);
}

/// Without the test CA (only the built-in Mozilla roots) the server is not trusted:
/// `Error::Tls` from `connect`, and `onerror` + `onclose(1006)` in callback style.
#[test]
fn unknown_ca_is_a_tls_error() {
    let _g = shared();
    let server = tls_echo_server(server_config(&pki().localhost, false));
    let (rec, rx) = recorder();
    let t = Instant::now();
    let r = WebSocket::connect(&wss_url(server.port()), rec);
    let err = r.expect_err("an untrusted server must be refused");
    let msg = tls_message(&err);
    assert!(msg.contains("issuer"), "{err}");
    assert!(t.elapsed() < WAIT, "took {:?}", t.elapsed());
    let recs = leftover_recs(&rx);
    assert_failure_tail(&recs, |e| matches!(e, Error::Tls { .. }));
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert!(
        server.join().is_err(),
        "the server's handshake must fail too"
    );

    // A certificate from another CA, with ours trusted: the same.
    let server = tls_echo_server(server_config(&pki().stranger, false));
    let r = WebSocket::builder()
        .add_root_certificate(&pki().ca_pem)
        .connect_pull(&wss_url(server.port()));
    let err = r.expect_err("a certificate from an untrusted CA");
    assert!(tls_message(&err).contains("issuer"), "{err}");
    assert!(server.join().is_err());
}

#[test]
fn certificate_for_another_name_is_a_tls_error() {
    let _g = shared();
    let server = tls_echo_server(server_config(&pki().wrong_name, false));
    let (rec, rx) = recorder();
    let r = WebSocket::builder()
        .add_root_certificate(&pki().ca_pem)
        .connect(&wss_url(server.port()), rec);
    let err = r.expect_err("a certificate for wrong.example must not do for localhost");
    assert!(tls_message(&err).contains("name"), "{err}");
    let recs = leftover_recs(&rx);
    assert_failure_tail(&recs, |e| matches!(e, Error::Tls { .. }));
    assert!(server.join().is_err());
}

/// The explicit opt-out connects to a server nobody vouches for (unknown CA, wrong name).
#[test]
fn danger_accept_invalid_certificates_connects_to_an_untrusted_server() {
    let _g = shared();
    for leaf in [&pki().stranger, &pki().wrong_name] {
        let server = tls_echo_server(server_config(leaf, false));
        let (ws, events) = WebSocket::builder()
            .danger_accept_invalid_certificates(true)
            .connect_pull(&wss_url(server.port()))
            .expect("verification is off");
        echo_round_trip(ws, &events);
        assert_eq!(server.join().expect("server").echoed, 2);
    }
}

#[test]
fn client_certificate_is_presented_when_the_server_requires_one() {
    let _g = shared();
    let server = tls_echo_server(server_config(&pki().localhost, true));
    let (ws, events) = WebSocket::builder()
        .add_root_certificate(&pki().ca_pem)
        .client_certificate(&pki().client.cert_pem, &pki().client.key_pem)
        .connect_pull(&wss_url(server.port()))
        .expect("mutual TLS");
    echo_round_trip(ws, &events);
    let report = server.join().expect("server");
    assert_eq!(report.client_certs, 1, "{report:?}");
    assert_eq!(report.echoed, 2);
}

/// Without a client certificate the server refuses the connection. With TLS 1.3 the client
/// learns it only from the server's alert after its own handshake finished; either way it
/// must be a typed error, at once, followed by `onclose(1006)`.
#[test]
fn missing_client_certificate_fails_with_a_typed_error() {
    let _g = shared();
    let server = tls_echo_server(server_config(&pki().localhost, true));
    let (rec, rx) = recorder();
    let t = Instant::now();
    let r = WebSocket::builder()
        .add_root_certificate(&pki().ca_pem)
        .connect(&wss_url(server.port()), rec);
    let err = r.expect_err("the server requires a client certificate");
    eprintln!("missing client certificate: {err:?}");
    assert!(
        matches!(&err, Error::Tls { .. } if tls_message(&err).contains("certificate")),
        "{err:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let recs = leftover_recs(&rx);
    assert_failure_tail(&recs, |e| matches!(e, Error::Tls { .. }));
    let server_side = server.join();
    assert!(server_side.is_err(), "{server_side:?}");
}

/// A root certificate PEM that is not one is refused synchronously, by the non-blocking
/// constructor, before any connection is attempted; so is a bad client certificate.
#[test]
fn bad_pem_is_a_synchronous_tls_error() {
    let _g = shared();
    // Nothing listens: a TLS error proves nothing was attempted.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = wss_url(listener.local_addr().unwrap().port());
    listener.set_nonblocking(true).unwrap();
    let garbage_der = "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";
    let broken_base64 =
        "-----BEGIN CERTIFICATE-----\n!!!! not base64 !!!!\n-----END CERTIFICATE-----\n";
    for pem in ["not a certificate at all", "", garbage_der, broken_base64] {
        let r = WebSocket::builder()
            .add_root_certificate(pem)
            .open(&url, ());
        assert!(matches!(&r, Err(Error::Tls { .. })), "{pem:?}: {r:?}");
    }
    let r = WebSocket::builder()
        .client_certificate("not a chain", &pki().client.key_pem)
        .open_pull(&url);
    // An empty chain is not caught by PEM parsing; it must be refused all the same.
    assert!(
        matches!(&r, Err(Error::Tls { .. })),
        "bad client chain: {r:?}"
    );
    let r = WebSocket::builder()
        .client_certificate(&pki().client.cert_pem, "not a key")
        .open_pull(&url);
    assert!(
        matches!(&r, Err(Error::Tls { .. })),
        "bad client key: {r:?}"
    );
    // And none of them connected.
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection was attempted"
    );
}

/// `wss://` against a plain `ws://` server: a typed error, quickly (no hang until a timeout).
#[test]
fn wss_against_a_plain_server_fails_fast() {
    let _g = shared();
    let server = raw_server(|stream| {
        tungstenite::accept(stream)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let t = Instant::now();
    let r = WebSocket::builder()
        .handshake_timeout(Duration::from_secs(8))
        .connect_pull(&format!("wss://127.0.0.1:{}/", server.port()));
    let elapsed = t.elapsed();
    let err = r.expect_err("a plain server cannot speak TLS");
    eprintln!("wss:// against ws://: {err:?} after {elapsed:?}");
    assert!(
        matches!(
            err,
            Error::Tls {
                kind: TlsErrorKind::NotTls,
                ..
            }
        ),
        "{err:?}"
    );
    // Named for what it is, not "the server closed the connection during the handshake".
    assert!(err.to_string().contains("ws://"), "{err}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(
        server.join().is_err(),
        "the server saw a TLS hello, not HTTP"
    );
}

/// `ws://` against a TLS server: a typed error, quickly.
#[test]
fn ws_against_a_tls_server_fails_fast() {
    let _g = shared();
    let server = tls_server(server_config(&pki().localhost, false), |mut tls| {
        let mut buf = [0u8; 1024];
        tls.read(&mut buf).map(drop).map_err(|e| e.to_string())
    });
    let t = Instant::now();
    let r = WebSocket::builder()
        .handshake_timeout(Duration::from_secs(8))
        .connect_pull(&format!("ws://localhost:{}/", server.port()));
    let elapsed = t.elapsed();
    let err = r.expect_err("plain HTTP to a TLS server");
    eprintln!("ws:// against wss://: {err:?} after {elapsed:?}");
    assert!(
        matches!(
            err,
            Error::Handshake { .. } | Error::Io(_) | Error::HandshakeRejected { .. }
        ),
        "{err:?}"
    );
    // When the server's TLS alert arrived (rather than a reset), the message says so.
    if let Error::Handshake {
        kind: HandshakeErrorKind::InvalidResponse,
        ..
    } = &err
    {
        assert!(err.to_string().contains("wss://"), "{err}");
    }
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(server.join().is_err(), "the TLS server saw plain HTTP");
}

/// A self-signed certificate that is its own CA (what `openssl req -x509` makes), added as
/// a root: webpki refuses it (CaUsedAsEndEntity), and the error says what to do instead.
#[test]
fn a_self_signed_ca_used_as_the_server_certificate_is_refused_with_a_hint() {
    let _g = shared();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("certificate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    let leaf = Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    };
    let server = tls_echo_server(server_config(&leaf, false));
    let err = WebSocket::builder()
        .add_root_certificate(&leaf.cert_pem)
        .connect_pull(&wss_url(server.port()))
        .expect_err("webpki refuses a CA certificate as the server's");
    assert!(
        matches!(
            err,
            Error::Tls {
                kind: TlsErrorKind::Certificate,
                ..
            }
        ),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(shown.contains("CaUsedAsEndEntity"), "{shown}");
    assert!(shown.contains("add_root_certificate"), "{shown}");
    assert!(server.join().is_err());
}

/// `native-tls` (the platform's TLS; OpenSSL here) against the same local server: trusted
/// through the added root, echoing both ways; and an untrusted server refused as a
/// certificate error.
#[cfg(feature = "native-tls")]
#[test]
fn native_tls_connects_with_an_added_root_and_refuses_an_unknown_ca() {
    let _g = shared();
    let server = tls_echo_server(server_config(&pki().localhost, false));
    let (ws, events) = WebSocket::builder()
        .tls_backend(nwebsocket::TlsBackend::NativeTls)
        .add_root_certificate(&pki().ca_pem)
        .connect_pull(&wss_url(server.port()))
        .expect("wss with native-tls");
    echo_round_trip(ws, &events);
    assert_eq!(server.join().expect("server").echoed, 2);

    let server = tls_echo_server(server_config(&pki().stranger, false));
    let err = WebSocket::builder()
        .tls_backend(nwebsocket::TlsBackend::NativeTls)
        .add_root_certificate(&pki().ca_pem)
        .connect_pull(&wss_url(server.port()))
        .expect_err("a certificate from an untrusted CA");
    assert!(
        matches!(
            err,
            Error::Tls {
                kind: TlsErrorKind::Certificate,
                ..
            }
        ),
        "{err:?}: {}",
        err.chain()
    );
    assert!(server.join().is_err());
}

/// `os_root_certificates(true)`: the system's store (here `SSL_CERT_FILE`, which
/// rustls-native-certs reads first) is trusted instead of the compiled-in roots.
#[cfg(feature = "rustls-native-certs")]
#[test]
fn the_system_store_is_used_when_asked() {
    // The environment is the process's: no other test runs meanwhile.
    let _g = exclusive();
    let file = std::env::temp_dir().join(format!("nws-test-ca-{}.pem", std::process::id()));
    std::fs::write(&file, &pki().ca_pem).unwrap();
    std::env::set_var("SSL_CERT_FILE", &file);
    let server = tls_echo_server(server_config(&pki().localhost, false));
    let result = WebSocket::builder()
        .os_root_certificates(true)
        .connect_pull(&wss_url(server.port()));
    std::env::remove_var("SSL_CERT_FILE");
    let _ = std::fs::remove_file(&file);
    let (ws, events) = result.expect("the test CA is in the system's store");
    echo_round_trip(ws, &events);
    assert_eq!(server.join().expect("server").echoed, 2);
}

/// A server that takes the TCP connection and never answers the ClientHello: the
/// handshake timeout ends it, with its typed error.
#[test]
fn a_server_that_never_answers_the_client_hello_hits_the_handshake_timeout() {
    let _g = shared();
    let silent = raw_server(|mut s| read_to_end_quietly(&mut s));
    let t = Instant::now();
    let r = WebSocket::builder()
        .handshake_timeout(Duration::from_millis(300))
        .connect_pull(&wss_url(silent.port()));
    assert!(
        matches!(r, Err(Error::Timeout(nwebsocket::Timeout::Handshake))),
        "{:?}",
        r.err()
    );
    assert!(t.elapsed() < WAIT, "took {:?}", t.elapsed());
    silent.join();
}

/// The 101 over TLS (read up to its blank line), then `tail`, then the end of the TLS
/// stream: with a close_notify, or a bare TCP close.
fn tls_101_then(tail: &'static [u8], close_notify: bool) -> Server<()> {
    tls_server(server_config(&pki().localhost, false), move |mut tls| {
        let head = read_http_head(&mut tls);
        let key = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_owned())
            })
            .expect("server: no key");
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            tungstenite::handshake::derive_accept_key(key.as_bytes())
        );
        tls.write_all(answer.as_bytes()).unwrap();
        tls.write_all(tail).unwrap();
        if close_notify {
            tls.conn.send_close_notify();
        }
        tls.flush().unwrap();
        let _ = tls.sock.shutdown(std::net::Shutdown::Write);
        let _ = tls.sock.read(&mut [0u8; 256]);
    })
}

/// The TLS stream ends in the middle of a frame, or after a message with no Close frame,
/// with or without a close_notify: what came whole is delivered, then the failure
/// (rule 4). After the server's Close frame the same ending is a clean close (rule 6).
#[test]
fn a_tls_stream_ending_without_a_closing_handshake_fails_either_way() {
    let _g = shared();
    for close_notify in [true, false] {
        for tail in [
            &b"\x81\x05hello\x81\x05he"[..],
            &b"\x81\x05hello"[..],
            &b"\x81\x05hello\x88\x02\x03\xe8"[..],
        ] {
            let server = tls_101_then(tail, close_notify);
            let (ws, events) = WebSocket::builder()
                .add_root_certificate(&pki().ca_pem)
                .connect_pull(&wss_url(server.port()))
                .expect("connect");
            let evs = events_until_close(&events);
            let clean = tail.ends_with(b"\x88\x02\x03\xe8");
            let ok = match evs.as_slice() {
                [Event::Open, rest @ ..] => match (rest, clean) {
                    ([Event::Message(m), Event::Close(c)], true) => {
                        m.as_text() == Some("hello") && c.code == 1000 && c.was_clean
                    }
                    ([Event::Message(m), Event::Error(_), Event::Close(c)], false) => {
                        m.as_text() == Some("hello") && c.code == 1006 && !c.was_clean
                    }
                    _ => false,
                },
                _ => false,
            };
            assert!(ok, "close_notify {close_notify}, {tail:?}: {evs:?}");
            drop(ws);
            server.join();
        }
    }
}
