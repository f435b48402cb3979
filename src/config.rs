//! The builder: every setting of a connection, each with a bounded default.

use std::sync::Arc;
use std::time::Duration;

use crate::delivery::{EventBatches, Events};
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::io::proxy::ProxyChoice;
use crate::io::TlsOptions;
use crate::websocket::WebSocket;

/// Settings for a connection, set with chained calls, then used to connect.
///
/// Every wait has a bound and every buffer a limit by default.
///
/// ```
/// use std::time::Duration;
/// use nwebsocket::WebSocket;
///
/// let builder = WebSocket::builder()
///     .subprotocol("chat.v1")
///     .header("X-Client", "docs")
///     .connect_timeout(Duration::from_secs(5))
///     .max_message_size(1 << 20);
/// # drop(builder);
/// ```
#[derive(Debug, Clone)]
#[must_use = "a Builder does nothing until `connect`, `open` or their pull variants are called"]
pub struct Builder {
    pub(crate) config: Config,
}

/// Pull style's default [`Builder::incoming_queue`]: events that may wait in the channel,
/// whose slots are allocated only while they wait.
pub(crate) const PULL_QUEUE: usize = 4096;
/// Callback style's default [`Builder::incoming_queue`]: events per batch, allocated only
/// while events flow.
pub(crate) const CALLBACK_QUEUE: usize = 512;

/// The largest size limit: 2^48 bytes (on 32-bit targets, `usize::MAX`).
const MAX_SIZE_LIMIT: usize = if usize::BITS > 48 {
    (1u64 << 48) as usize
} else {
    usize::MAX
};

/// The settled configuration the threads read. Private: set through [`Builder`].
/// Its `Debug` leaves out every secret (header and cookie values, proxy credentials, keys).
#[derive(Clone)]
pub(crate) struct Config {
    pub subprotocols: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub origin: Option<String>,
    pub cookies: Vec<(String, String)>,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub close_timeout: Duration,
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    pub max_message_size: usize,
    pub max_frame_size: usize,
    /// `None`: the style's default ([`PULL_QUEUE`] or [`CALLBACK_QUEUE`]).
    pub incoming_queue: Option<usize>,
    pub incoming_queue_bytes: usize,
    pub high_water_mark: usize,
    pub send_timeout: Duration,
    pub nodelay: bool,
    pub ping_events: bool,
    pub read_buffer_size: usize,
    pub request_id_field: String,
    pub tls_options: TlsOptions,
    /// Built from `tls_options` when connecting; `None` for the shared default.
    pub tls: Option<crate::io::TlsConfig>,
    pub max_redirects: usize,
    pub reconnect: Option<Reconnect>,
    pub proxy: ProxyChoice,
    pub header_provider: Option<HeaderProvider>,
    /// `None`: the system's resolver (`getaddrinfo`).
    pub resolver: Option<Resolver>,
    /// `None`: permessage-deflate is not offered.
    #[cfg(feature = "deflate")]
    pub deflate: Option<Deflate>,
}

/// Computes headers afresh for each attempt (see [`Builder::header_provider`]).
pub(crate) type HeaderProvider = Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>;

/// Resolves a host name and port to addresses (see [`Builder::resolver`]).
pub(crate) type Resolver =
    Arc<dyn Fn(&str, u16) -> std::io::Result<Vec<std::net::SocketAddr>> + Send + Sync>;

impl Default for Config {
    fn default() -> Self {
        Config {
            subprotocols: Vec::new(),
            headers: Vec::new(),
            origin: None,
            cookies: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(10),
            ping_interval: None,
            pong_timeout: Duration::from_secs(10),
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            incoming_queue: None,
            incoming_queue_bytes: crate::delivery::BATCH_BYTES,
            high_water_mark: 8 << 20,
            send_timeout: Duration::from_secs(10),
            nodelay: true,
            ping_events: false,
            // Bytes per read call at most; tungstenite grows the buffer only as frames need.
            read_buffer_size: 16 << 10,
            request_id_field: "id".to_owned(),
            tls_options: TlsOptions::default(),
            tls: None,
            max_redirects: 3,
            reconnect: None,
            proxy: ProxyChoice::Environment,
            header_provider: None,
            resolver: None,
            #[cfg(feature = "deflate")]
            deflate: Some(Deflate::new()),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |pairs: &[(String, String)]| -> Vec<String> {
            pairs
                .iter()
                .map(|(name, _)| format!("{name}: <redacted>"))
                .collect()
        };
        let proxy = match &self.proxy {
            ProxyChoice::Url(url) => match url::Url::parse(url) {
                Ok(mut u) => {
                    let _ = u.set_password(None);
                    let _ = u.set_username("");
                    format!("Url({u})")
                }
                Err(_) => "Url(<unparsable>)".to_owned(),
            },
            other => format!("{other:?}"),
        };
        let mut f = f.debug_struct("Config");
        f.field("subprotocols", &self.subprotocols)
            .field("headers", &names(&self.headers))
            .field("origin", &self.origin)
            .field("cookies", &names(&self.cookies))
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("pong_timeout", &self.pong_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("max_frame_size", &self.max_frame_size)
            .field("incoming_queue", &self.incoming_queue)
            .field("incoming_queue_bytes", &self.incoming_queue_bytes)
            .field("high_water_mark", &self.high_water_mark)
            .field("send_timeout", &self.send_timeout)
            .field("nodelay", &self.nodelay)
            .field("ping_events", &self.ping_events)
            .field("request_id_field", &self.request_id_field)
            .field(
                "extra_root_certificates",
                &self.tls_options.extra_roots_pem.len(),
            )
            .field(
                "client_certificate",
                &self.tls_options.client_cert_pem.is_some(),
            )
            .field(
                "accept_invalid_certificates",
                &self.tls_options.accept_invalid_certs,
            )
            .field("max_redirects", &self.max_redirects)
            .field("reconnect", &self.reconnect)
            .field("proxy", &proxy)
            .field("header_provider", &self.header_provider.is_some())
            .field("resolver", &self.resolver.is_some());
        #[cfg(feature = "deflate")]
        f.field("deflate", &self.deflate);
        f.finish()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A builder with the defaults listed on each setter.
    pub fn new() -> Self {
        Builder {
            config: Config::default(),
        }
    }

    /// Offers a subprotocol in `Sec-WebSocket-Protocol`; call once per protocol, in order of
    /// preference. The server's choice is [`protocol()`](crate::WebSocketRef::protocol); a
    /// choice that was not offered fails the connection. An empty, non-token or repeated
    /// name is refused when connecting with [`Error::InvalidSubprotocol`].
    /// Defaults to none.
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.config.subprotocols.push(protocol.into());
        self
    }

    /// Adds a header to the opening handshake request (for example `Authorization` or a
    /// cookie). Defaults to none.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.headers.push((name.into(), value.into()));
        self
    }

    /// Calls `provider` before each connection attempt (the first, each reconnect, each
    /// redirect) and adds the headers it returns to that attempt's handshake request,
    /// replacing headers of the same name from [`header`](Self::header): for credentials
    /// that expire, such as a bearer token refreshed between reconnects. It runs on the
    /// connection's I/O thread before the attempt starts (so keep it quick: it delays the
    /// attempt, nothing else); a panic in it is caught and fails the attempt with
    /// [`Error::CallbackPanic`], an unusable header with [`Error::InvalidHeader`]. Its
    /// values are marked sensitive and never logged. Defaults to none.
    ///
    /// ```
    /// use nwebsocket::WebSocket;
    ///
    /// let builder = WebSocket::builder().header_provider(|| {
    ///     let token = "fresh-token"; // fetched from your token cache
    ///     vec![("Authorization".to_owned(), format!("Bearer {token}"))]
    /// });
    /// # drop(builder);
    /// ```
    pub fn header_provider<F>(mut self, provider: F) -> Self
    where
        F: Fn() -> Vec<(String, String)> + Send + Sync + 'static,
    {
        self.config.header_provider = Some(Arc::new(provider));
        self
    }

    /// Resolves host names with `resolver` instead of the system's resolver: called with
    /// the host and port of the URL (or of a redirect's target, or of the proxy; for a
    /// `socks5://` proxy, of the target too), on a thread of its own, its addresses tried
    /// in order. An error fails the connection with [`Error::Dns`](crate::Error::Dns);
    /// the connect timeout bounds the wait. IP addresses are not resolved. For a
    /// resolver with a cache, or to pin a name to an address (as `curl --resolve` does).
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use nwebsocket::WebSocket;
    ///
    /// let builder = WebSocket::builder().resolver(|host: &str, port: u16| match host {
    ///     "feed.example" => Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]),
    ///     _ => std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).map(Iterator::collect),
    /// });
    /// # drop(builder);
    /// ```
    pub fn resolver<F>(mut self, resolver: F) -> Self
    where
        F: Fn(&str, u16) -> std::io::Result<Vec<std::net::SocketAddr>> + Send + Sync + 'static,
    {
        self.config.resolver = Some(Arc::new(resolver));
        self
    }

    /// Sets the `Origin` header. Defaults to none (browsers always send one; servers
    /// that check it need this).
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.config.origin = Some(origin.into());
        self
    }

    /// Adds a cookie to the opening handshake (all cookies go in one `Cookie` header, in
    /// the order given, followed by the value of a [`header`](Self::header) named
    /// `Cookie`). The name must be an HTTP token and the value RFC 6265's cookie octets
    /// (no spaces, `"`, `,`, `;`, `\` or control characters; the whole value may be in
    /// double quotes), or connecting fails at once with
    /// [`Error::InvalidHeader`](crate::Error::InvalidHeader). Defaults to none.
    pub fn cookie(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.cookies.push((name.into(), value.into()));
        self
    }

    /// Bounds reaching the server: resolving its name (or the proxy's) and the TCP
    /// connect, over all resolved addresses. Once it runs out the connection fails with
    /// [`Timeout::Connect`](crate::Timeout::Connect), even while a name is still being
    /// resolved, and `close` or a drop end it at once too: names are resolved on a
    /// thread of their own (`nwebsocket-dns`; `localhost` and addresses need none),
    /// which is left to finish (the system's resolver, `getaddrinfo`, gives up after its
    /// own timeouts, 5 s per try by default). Defaults to 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Bounds the proxy's tunnel, the TLS and the WebSocket opening handshake, once TCP is
    /// connected.
    /// Defaults to 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Bounds the closing handshake, in two parts, as Python `websockets` does. While our
    /// Close frame waits behind messages queued before it, the server may not stall for
    /// this long (the timer restarts whenever it takes data), so a slow but live reader
    /// gets everything sent before `close`. Once the Close frame is handed to the OS, the
    /// server has this long to answer it and end the TCP stream (data still in the kernel's
    /// buffers counts against this). Past either, the connection is dropped and reported
    /// as 1006. Dropping the last handle waits at most about this long in all.
    /// Defaults to 10 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// Sends a keepalive ping this often; a pong missing for [`pong_timeout`](Self::pong_timeout)
    /// fails the connection with [`Timeout::Pong`](crate::Timeout::Pong). Defaults to off:
    /// an idle connection then wakes the process for nothing at all. `Duration::ZERO`
    /// turns it off, as `ping_interval=0` does in Python's `websocket-client`.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.config.ping_interval = (!interval.is_zero()).then_some(interval);
        self
    }

    /// How long to wait for a pong after a keepalive ping, counted from the ping's write.
    /// A ping that waits behind a large frame of ours is not held against a server that
    /// is still taking what came before it (on Linux, while the socket's send queue goes
    /// down), and a pong that may wait unread behind events you have not taken gets one
    /// more timeout while the socket is read for it. Defaults to 10 s.
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.config.pong_timeout = timeout;
        self
    }

    /// The largest incoming message, in bytes; a larger one closes the connection with
    /// 1009 and [`Error::Capacity`]. Defaults to 16 MiB. At most 2^48 bytes (256 TiB,
    /// more than any machine can hold): larger values, `usize::MAX` included, mean that.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes.min(MAX_SIZE_LIMIT);
        self
    }

    /// The largest incoming frame payload, in bytes; a larger one closes the connection
    /// with 1009 and [`Error::Capacity`]. Defaults to 16 MiB. At most 2^48 bytes, as for
    /// [`max_message_size`](Self::max_message_size).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame_size = bytes.min(MAX_SIZE_LIMIT);
        self
    }

    /// How many events may wait for the consumer. When the queue is full the I/O thread
    /// stops reading the socket, so TCP slows the server down and memory stays bounded.
    ///
    /// - Pull style: how many events may wait in your [`Events`]' channel, besides the
    ///   read burst (up to 512 events) it is handing out and one burst (up to 512) the
    ///   I/O thread has read and not handed over. Events go over in bursts, each a
    ///   vector of 56 bytes per event allocated while events flow (and, once you use the
    ///   raw receiver, in crossbeam slots of 64 bytes, allocated in blocks while events
    ///   wait). Payload is bounded too: the I/O thread puts no more messages in while
    ///   2 MiB of payload waits there, and reads no more while its burst holds 2 MiB.
    ///   What waits stays below (`incoming_queue` + 1,024) × 64 bytes plus about 6 MiB
    ///   and three messages of `max_message_size`. While the channel is full the I/O
    ///   thread sleeps; your next take of a burst wakes it. Defaults to 4096: on a shared
    ///   core your thread and the I/O thread then take turns once per thousands of
    ///   messages, not once per hundred.
    /// - Callback style, and pull style in batches ([`connect_batches`](Self::connect_batches)):
    ///   the I/O thread hands events over in batches of up to this many events or 2 MiB
    ///   of payload; one batch waits while another is
    ///   gathered and the callback thread runs a third. Nothing is allocated until events
    ///   flow. Defaults to 512: larger batches mean fewer thread switches per message.
    ///
    /// Values below 1 are taken as 1.
    pub fn incoming_queue(mut self, events: usize) -> Self {
        self.config.incoming_queue = Some(events.max(1));
        self
    }

    /// How many bytes of message payload may wait for the consumer, beside the count of
    /// [`incoming_queue`](Self::incoming_queue): in pull style, in your channel (and as
    /// much again in the I/O thread's read burst); in callback and batch style, per batch.
    /// Defaults to 2 MiB.
    ///
    /// # When the consumer falls behind
    ///
    /// Once either bound is reached the I/O thread stops reading the socket: TCP slows
    /// the server down and memory stays bounded. It still writes (your sends, and pongs
    /// to pings it has read), but pings the server sends meanwhile wait unread in the
    /// socket, so a server whose keepalive expects a pong within a few seconds may close
    /// the connection (1011 "keepalive ping timeout" is typical) if your thread takes no
    /// events for longer than that. Take events at least as often as the server's
    /// keepalive allows, or raise this bound. The crate logs a warning once per
    /// connection when its queue has been full for longer than the
    /// [`ping_interval`](Self::ping_interval) (10 s when none is set). While closing, the
    /// I/O thread reads on regardless (up to 16 MiB more), so that the server's answer to
    /// the Close is seen.
    ///
    /// Values below 1 are taken as 1.
    pub fn incoming_queue_bytes(mut self, bytes: usize) -> Self {
        self.config.incoming_queue_bytes = bytes.max(1);
        self
    }

    /// Outgoing high-water mark, in bytes of application data: when
    /// [`buffered_amount()`](crate::WebSocketRef::buffered_amount) is above it, `send` blocks,
    /// `try_send` returns [`SendError::Full`](crate::SendError::Full) and `send_timeout`
    /// waits up to its timeout. Defaults to 8 MiB.
    pub fn high_water_mark(mut self, bytes: usize) -> Self {
        self.config.high_water_mark = bytes;
        self
    }

    /// How long [`send`](crate::WebSocketRef::send) (and `send_json`) waits for room under
    /// the [high-water mark](Self::high_water_mark) before it hands the message back with
    /// [`SendError::TimedOut`](crate::SendError::TimedOut): a server that stays connected
    /// but reads nothing cannot block a sending thread for good. The connection stays
    /// open; what was accepted goes out once the server reads again.
    /// [`send_timeout`](crate::WebSocketRef::send_timeout) sets a bound per call instead.
    /// `Duration::MAX` waits for as long as it takes. Defaults to 10 s.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.config.send_timeout = timeout;
        self
    }

    /// Sets `TCP_NODELAY` (no Nagle delay on small messages). Defaults to `true`.
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.config.nodelay = nodelay;
        self
    }

    /// Reports incoming pings and pongs as [`Event::Ping`](crate::Event::Ping) / [`Event::Pong`](crate::Event::Pong) and to
    /// [`Handler::onping`] / [`Handler::onpong`]. Pings are answered either way.
    /// Defaults to `false`.
    pub fn ping_events(mut self, enabled: bool) -> Self {
        self.config.ping_events = enabled;
        self
    }

    /// The JSON field that carries the correlation id of
    /// [`request`](crate::WebSocketRef::request)s and their replies. Defaults to `"id"`.
    #[cfg(feature = "json")]
    pub fn request_id_field(mut self, field: impl Into<String>) -> Self {
        self.config.request_id_field = field.into();
        self
    }

    /// Trusts the certificate authorities in `pem` (one or more PEM certificates) for
    /// `wss://`, besides the built-in Mozilla roots of `webpki-roots`. For private CAs
    /// and self-signed test servers. A bad PEM is an [`Error::Tls`] when connecting.
    /// Defaults to none.
    pub fn add_root_certificate(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.config
            .tls_options
            .extra_roots_pem
            .push(pem.as_ref().to_vec());
        self
    }

    /// Authenticates with a client certificate (TLS mutual authentication): the
    /// certificate chain and its private key, both PEM. Defaults to none.
    pub fn client_certificate(
        mut self,
        chain_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        self.config.tls_options.client_cert_pem =
            Some((chain_pem.as_ref().to_vec(), key_pem.as_ref().to_vec()));
        self
    }

    /// With rustls, trusts the operating system's certificate store (read with
    /// `rustls-native-certs`: `/etc/ssl/certs` and the like, the macOS keychain, the
    /// Windows store; `SSL_CERT_FILE` / `SSL_CERT_DIR` when set) instead of the Mozilla
    /// roots of `webpki-roots`; roots added with
    /// [`add_root_certificate`](Self::add_root_certificate) are trusted as well. For
    /// corporate CAs installed on the machine. A store with no usable certificate is an
    /// [`Error::Tls`] when connecting. Defaults to `false` (the compiled-in roots, the same
    /// on every machine).
    #[cfg(feature = "rustls-native-certs")]
    pub fn os_root_certificates(mut self, enabled: bool) -> Self {
        self.config.tls_options.os_roots = enabled;
        self
    }

    /// Which TLS library makes `wss://` connections. Defaults to
    /// [`TlsBackend::Rustls`](crate::TlsBackend::Rustls) when the `rustls` feature is on
    /// (so with both features on, rustls is used unless this says otherwise), else
    /// [`TlsBackend::NativeTls`](crate::TlsBackend::NativeTls). Asking for one whose
    /// feature is off is an [`Error::Tls`] with
    /// [`TlsErrorKind::Unsupported`](crate::TlsErrorKind::Unsupported) when connecting.
    pub fn tls_backend(mut self, backend: crate::TlsBackend) -> Self {
        self.config.tls_options.backend = Some(backend);
        self
    }

    /// Turns TLS certificate verification **off**: any server can then impersonate any
    /// host. Only for tests against throwaway certificates; a warning is logged each
    /// time it is used. Defaults to `false`.
    pub fn danger_accept_invalid_certificates(mut self, accept: bool) -> Self {
        self.config.tls_options.accept_invalid_certs = accept;
        self
    }

    /// Follows up to this many HTTP redirects (301, 302, 303, 307, 308) of the opening
    /// handshake; one more is [`Error::TooManyRedirects`]. A redirect from `wss://` to
    /// `ws://` is refused, and credentials (the URL's, the `Authorization` and `Cookie`
    /// headers, cookies, also from the header provider) are not sent to another host or
    /// port. Defaults to 3.
    pub fn max_redirects(mut self, redirects: usize) -> Self {
        self.config.max_redirects = redirects;
        self
    }

    /// Tunnels through this proxy: HTTP (`http://[user:password@]host:port`, with
    /// `CONNECT`) or SOCKS5 (`socks5://`, or `socks5h://` to resolve names at the proxy),
    /// for `ws://` and `wss://` alike (TLS then runs end to end through the
    /// tunnel). Credentials in the proxy URL are sent as `Proxy-Authorization: Basic`.
    /// Defaults to the environment, as curl does (but, as Go does, never for loopback hosts):
    /// `https_proxy` for `wss://`, `http_proxy` for `ws://`, else `all_proxy` (lower or
    /// upper case; but not `HTTP_PROXY` in a CGI program, where a request's `Proxy:`
    /// header arrives under that name), except for hosts listed in `no_proxy` (names and
    /// their subdomains, addresses, CIDR ranges such as `10.0.0.0/8` for addresses in the
    /// URL, optional `:port`, or `*`).
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.config.proxy = ProxyChoice::Url(url.into());
        self
    }

    /// Never uses a proxy, whatever the environment says.
    pub fn no_proxy(mut self) -> Self {
        self.config.proxy = ProxyChoice::Off;
        self
    }

    /// Offers permessage-deflate (RFC 7692) with these settings instead of the defaults
    /// (see [`Deflate`]). Needs the `deflate` feature (on by default).
    ///
    /// Defaults to `Deflate::new()`: offered as browsers offer it,
    /// `permessage-deflate; client_max_window_bits`. A server that declines gets
    /// uncompressed messages; one that answers with anything RFC 7692 does not allow for
    /// that offer fails the handshake with [`Error::Handshake`].
    #[cfg(feature = "deflate")]
    pub fn deflate(mut self, settings: Deflate) -> Self {
        self.config.deflate = Some(settings);
        self
    }

    /// Does not offer permessage-deflate: no compression either way, no
    /// `Sec-WebSocket-Extensions` header. Without the `deflate` feature nothing is offered
    /// anyway.
    #[allow(unused_mut)] // without the feature
    pub fn no_deflate(mut self) -> Self {
        #[cfg(feature = "deflate")]
        {
            self.config.deflate = None;
        }
        self
    }

    /// Reconnects after a lost connection, with the given backoff policy. Each lost
    /// connection gives its own `onclose`, each new one its own `onopen` (where an
    /// application re-subscribes); `ready_state()` goes CLOSED → CONNECTING → OPEN, and
    /// sends in between hand the message back: with
    /// [`SendError::Closed`](crate::SendError::Closed) while CLOSED, with
    /// [`SendError::NotOpen`](crate::SendError::NotOpen) while CONNECTING.
    /// [`close`](crate::WebSocketRef::close) ends reconnecting, and so does a clean close
    /// from the server unless [`Reconnect::stop_on_clean_close`] says otherwise.
    /// [`connect`](Self::connect) still returns the first attempt's error; use
    /// [`open`](Self::open) to keep trying in the background from the start.
    /// Defaults to off.
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.config.reconnect = Some(policy);
        self
    }

    /// Connects and blocks until the connection is OPEN or has failed; `handler`'s methods
    /// then run on the connection's callback thread.
    ///
    /// # Errors
    ///
    /// A bad URL or subprotocol at once; otherwise whatever made the connection fail
    /// (the handler also sees it through `onerror` and `onclose`).
    pub fn connect<H>(self, url: &str, handler: H) -> Result<WebSocket<H>>
    where
        H: Handler + Send + 'static,
    {
        let ws = self.open(url, handler)?;
        ws.wait_open()?;
        Ok(ws)
    }

    /// Starts connecting and returns at once in CONNECTING, as the browser's constructor
    /// does; `onopen` or `onerror` + `onclose` follow on the callback thread.
    ///
    /// # Errors
    ///
    /// Only synchronous ones: a bad URL, subprotocol, header, cookie, proxy URL or PEM
    /// (root or client certificate), or a thread that cannot be spawned.
    pub fn open<H>(self, url: &str, handler: H) -> Result<WebSocket<H>>
    where
        H: Handler + Send + 'static,
    {
        WebSocket::start_with_handler(self.checked()?, url, handler)
    }

    /// Connects and blocks until OPEN or failure; events are yours to take from the
    /// returned channel (`recv`, `recv_timeout`, `try_recv`, `select!`), or to run through
    /// a handler on your own thread with
    /// [`dispatch_pending`](crate::WebSocketRef::dispatch_pending). Keep the [`Events`]:
    /// dropping it closes the connection with 1001.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub fn connect_pull(self, url: &str) -> Result<(WebSocket, Events)> {
        let (ws, events) = self.open_pull(url)?;
        ws.wait_open()?;
        Ok((ws, events))
    }

    /// Starts connecting and returns at once in CONNECTING, with the event channel.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_pull(self, url: &str) -> Result<(WebSocket, Events)> {
        WebSocket::start_pull(self.checked()?, url)
    }

    /// Pull style in batches: connects and blocks until OPEN or failure; the events come
    /// as whole read bursts through the returned [`EventBatches`], one channel operation
    /// per burst instead of per event. For consumers of floods of small messages; see
    /// [`EventBatches`]. Keep it: as with [`Events`](crate::Events), dropping it closes
    /// the connection with 1001 (and ends reconnecting), since nobody would take what the
    /// server sends.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub fn connect_batches(self, url: &str) -> Result<(WebSocket, EventBatches)> {
        let (ws, batches) = self.open_batches(url)?;
        ws.wait_open()?;
        Ok((ws, batches))
    }

    /// As [`connect_batches`](Self::connect_batches), but returns at once in CONNECTING.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_batches(self, url: &str) -> Result<(WebSocket, EventBatches)> {
        WebSocket::start_batches(self.checked()?, url)
    }

    fn checked(mut self) -> Result<Config> {
        crate::url::check_subprotocols(&self.config.subprotocols)?;
        self.config.tls = self.config.tls_options.build()?;
        if let ProxyChoice::Url(url) = &self.config.proxy {
            // Refuse a bad proxy URL now rather than on the I/O thread.
            crate::io::proxy::check_url(url)?;
        }
        for (name, value) in &self.config.cookies {
            check_cookie(name, value)?;
        }
        for (name, value) in &self.config.headers {
            let bad = |reason: &str| Error::InvalidHeader {
                name: name.clone(),
                reason: reason.to_owned(),
            };
            tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad("not a valid header name"))?;
            tungstenite::http::HeaderValue::from_str(value)
                .map_err(|_| bad("not a valid header value"))?;
        }
        Ok(self.config)
    }
}

/// A cookie for the `Cookie` header (RFC 6265 §4.1.1): the name an HTTP token, the value
/// cookie octets, optionally in double quotes. Anything else could end the cookie early
/// and add another (`x; admin=1`). The error names the cookie, never its value.
fn check_cookie(name: &str, value: &str) -> Result<()> {
    let refuse = |reason: &str| {
        Err(Error::InvalidHeader {
            name: "Cookie".to_owned(),
            reason: format!("the cookie named {name:?}: {reason}"),
        })
    };
    if !crate::url::is_token(name) {
        return refuse("a cookie name must be a non-empty HTTP token");
    }
    let octets = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    let cookie_octet =
        |b: u8| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E);
    if !octets.bytes().all(cookie_octet) {
        return refuse(
            "a cookie value may not hold spaces, '\"', ',', ';', '\\' or control characters \
             (RFC 6265; percent-encode them)",
        );
    }
    Ok(())
}

/// permessage-deflate settings (RFC 7692), for [`Builder::deflate`].
///
/// Offered by default. Each direction has its own context (the sliding window of past
/// data the compressor refers back to): made at the first compressed message in that
/// direction, so an idle connection costs nothing more, then kept for the connection's
/// life. With context takeover (the default) a message may refer back to earlier ones:
/// a stream of similar JSON messages compresses far better.
///
/// Memory against ratio, per connection after compressed traffic (measured figures in
/// `benches/compare/README.md`): the inflater keeps a window of 2^`server_max_window_bits`
/// bytes (32 KiB at 15) and its state; the compressor, made only once a message of at
/// least [`threshold`](Self::threshold) bytes was sent, about 330 KiB at the default
/// window, about 210 KiB at 9 bits. Smaller windows cost less and compress repetitive
/// streams less well. Without context takeover in a direction, that direction's context
/// is dropped after each message, so memory returns to the idle level, but each message
/// is compressed on its own (much worse for streams of small similar messages) and pays
/// for a fresh context.
///
/// ```
/// use nwebsocket::{Deflate, WebSocket};
///
/// let builder = WebSocket::builder().deflate(
///     Deflate::new()
///         .server_max_window_bits(10)
///         .client_no_context_takeover(true)
///         .level(1),
/// );
/// # drop(builder);
/// ```
#[cfg(feature = "deflate")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deflate {
    pub(crate) server_no_context_takeover: bool,
    pub(crate) client_no_context_takeover: bool,
    pub(crate) server_max_window_bits: Option<u8>,
    pub(crate) client_max_window_bits: Option<u8>,
    pub(crate) offer_client_max_window_bits: bool,
    pub(crate) level: u32,
    pub(crate) threshold: usize,
}

#[cfg(feature = "deflate")]
impl Default for Deflate {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "deflate")]
impl Deflate {
    /// The defaults, as browsers offer: `permessage-deflate; client_max_window_bits`,
    /// context takeover both ways, windows of 2^15 bytes unless the server asks for
    /// less, compression level 6, and messages of 1 KiB and up compressed.
    pub fn new() -> Self {
        Deflate {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: None,
            offer_client_max_window_bits: true,
            level: 6,
            threshold: 1024,
        }
    }

    /// Asks the server to compress each message on its own (`server_no_context_takeover`).
    /// The server may ignore it. Defaults to `false`.
    pub fn server_no_context_takeover(mut self, on: bool) -> Self {
        self.server_no_context_takeover = on;
        self
    }

    /// Compresses each message we send on its own (`client_no_context_takeover`; the
    /// server may also ask for it). Defaults to `false`.
    pub fn client_no_context_takeover(mut self, on: bool) -> Self {
        self.client_no_context_takeover = on;
        self
    }

    /// Asks the server to use a window of at most 2^`bits` bytes (8 to 15, clamped),
    /// which bounds the memory we spend inflating; the server must agree or the handshake
    /// fails. Defaults to not asking (15).
    pub fn server_max_window_bits(mut self, bits: u8) -> Self {
        self.server_max_window_bits = Some(bits.clamp(8, 15));
        self
    }

    /// Compresses with a window of at most 2^`bits` bytes (8 to 15, clamped; 8 is
    /// compressed with 9, which zlib keeps within 256 bytes), and tells the server so.
    /// Defaults to 15, or less if the server asks.
    pub fn client_max_window_bits(mut self, bits: u8) -> Self {
        self.client_max_window_bits = Some(bits.clamp(8, 15));
        self
    }

    /// Whether to offer `client_max_window_bits` without a value (when
    /// [`client_max_window_bits`](Self::client_max_window_bits) is not set), which lets
    /// the server choose our window. Defaults to `true`, as browsers do; with `false`, a
    /// server that answers with `client_max_window_bits` fails the handshake (RFC 7692
    /// §7.1.2.2).
    pub fn offer_client_max_window_bits(mut self, offer: bool) -> Self {
        self.offer_client_max_window_bits = offer;
        self
    }

    /// The compression level, 0 (none) to 9 (smallest, slowest); clamped. Defaults to 6,
    /// zlib's default.
    pub fn level(mut self, level: u32) -> Self {
        self.level = level.min(9);
        self
    }

    /// Messages we send of at least this many bytes are compressed; smaller ones go as
    /// they are (compressing a few bytes rarely pays, as Node's `ws` decides with the same
    /// default). Incoming messages are inflated whatever their size. Defaults to 1024.
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }
}

/// When and how often to reconnect: exponential backoff with jitter.
///
/// The delay before attempt *n* (counting from 0 after each successful open) is
/// `min(initial_delay × multiplier^n, max_delay)`, shortened by a random fraction of up to
/// `jitter`, so that many clients dropped at once do not come back at once.
///
/// ```
/// use std::time::Duration;
/// use nwebsocket::{Reconnect, WebSocket};
///
/// let builder = WebSocket::builder().reconnect(
///     Reconnect::new()
///         .initial_delay(Duration::from_millis(200))
///         .max_delay(Duration::from_secs(10))
///         .max_attempts(20),
/// );
/// # drop(builder);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a Reconnect policy does nothing until given to `Builder::reconnect`"]
pub struct Reconnect {
    initial_delay: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: f64,
    max_attempts: Option<u32>,
    pub(crate) stop_on_clean_close: bool,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self::new()
    }
}

impl Reconnect {
    /// The defaults: 0.5 s doubling up to 30 s, 20 % jitter, no attempt limit, and a clean
    /// close from the server ends reconnecting.
    pub fn new() -> Self {
        Reconnect {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
            max_attempts: None,
            stop_on_clean_close: true,
        }
    }

    /// The delay before the first reconnect. Zero reconnects at once the first time, then
    /// backs off as if it had been 10 ms (20 ms, 40 ms, … with the default multiplier).
    /// Defaults to 0.5 s.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// The longest delay. Zero retries at once every time: set
    /// [`max_attempts`](Self::max_attempts) then, or a server that refuses is hammered.
    /// Defaults to 30 s.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How much each delay grows over the previous one. Defaults to 2. Values below 1
    /// are taken as 1.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier.max(1.0);
        self
    }

    /// The largest random fraction taken off each delay, 0 to 1. Defaults to 0.2.
    pub fn jitter(mut self, jitter: f64) -> Self {
        // (`clamp` keeps a NaN.)
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self
    }

    /// Gives up after this many consecutive failed attempts. Defaults to no limit.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    pub(crate) fn max_attempts_limit(&self) -> Option<u32> {
        self.max_attempts
    }

    /// Whether a clean close by the server (a Close frame, say 1000 or 1001) ends
    /// reconnecting. Defaults to `true`; set `false` to reconnect after server restarts
    /// that close politely.
    pub fn stop_on_clean_close(mut self, stop: bool) -> Self {
        self.stop_on_clean_close = stop;
        self
    }

    /// The delay before attempt `n` (from 0), with `unit` a random number in `[0, 1)`.
    /// Saturates at `Duration::MAX` (no limit: the next attempt waits for nothing but
    /// `close`).
    pub(crate) fn delay(&self, n: u32, unit: f64) -> Duration {
        // A zero initial delay: at once the first time, then backing off from 10 ms (zero
        // would never grow).
        let base = match n {
            1.. if self.initial_delay.is_zero() => Duration::from_millis(10),
            _ => self.initial_delay,
        };
        let grown = base.as_secs_f64() * self.multiplier.powi(n.min(64) as i32);
        let capped = grown.min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(capped * (1.0 - self.jitter * unit)).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_has_no_secrets() {
        let b = Builder::new()
            .header("Authorization", "Bearer top-secret-token")
            .cookie("session", "secret-cookie")
            .proxy("http://user:proxy-password@proxy:3128")
            .client_certificate("CERT", "PRIVATE-KEY-PEM");
        let shown = format!("{b:?}");
        for secret in [
            "top-secret-token",
            "secret-cookie",
            "proxy-password",
            "PRIVATE-KEY-PEM",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("Authorization: <redacted>"), "{shown}");
        assert!(shown.contains("proxy:3128"), "{shown}");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let r = Reconnect::new()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1))
            .jitter(0.0);
        let ms = |n| r.delay(n, 0.5).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(4), ms(10)],
            [100, 200, 400, 800, 1000, 1000]
        );
    }

    #[test]
    fn delays_saturate_instead_of_panicking() {
        let r = Reconnect::new()
            .initial_delay(Duration::MAX)
            .max_delay(Duration::MAX)
            .jitter(0.0);
        assert_eq!(r.delay(0, 0.5), Duration::MAX);
        assert_eq!(r.delay(u32::MAX, 0.5), Duration::MAX);
        let r = Reconnect::new()
            .max_delay(Duration::MAX)
            .multiplier(f64::INFINITY)
            .jitter(f64::NAN);
        assert_eq!(r.delay(0, 0.5), Duration::from_millis(500));
        assert_eq!(r.delay(3, 0.5), Duration::MAX);
        let r = Reconnect::new().multiplier(f64::NAN).jitter(0.0);
        assert_eq!(r.delay(5, 0.5), Duration::from_millis(500));
    }

    /// A zero initial delay retries at once the first time, then backs off from 10 ms: a
    /// delay of zero times the multiplier would stay zero, a reconnect loop hammering the
    /// server (until 2026-12-07: 218 attempts in 300 ms against a server answering 503).
    #[test]
    fn a_zero_initial_delay_still_backs_off() {
        let r = Reconnect::new().initial_delay(Duration::ZERO).jitter(0.0);
        let ms = |n| r.delay(n, 0.0).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(20)],
            [0, 20, 40, 80, 30_000]
        );
    }

    #[test]
    fn jitter_only_shortens() {
        let r = Reconnect::new()
            .initial_delay(Duration::from_secs(1))
            .jitter(0.5);
        assert_eq!(r.delay(0, 0.0), Duration::from_secs(1));
        assert_eq!(
            r.delay(0, 0.999_999),
            Duration::from_secs_f64(1.0 - 0.5 * 0.999_999)
        );
    }
}
