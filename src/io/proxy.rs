//! Proxies: HTTP CONNECT and SOCKS5 (RFC 1928, with RFC 1929 username/password), from
//! the builder or from the usual environment variables. The tunnel's set-up is a small
//! socket-free state machine ([`Tunnel`]): bytes to write, bytes read fed in, until the
//! tunnel is open; the I/O thread drives it without blocking.

use std::net::IpAddr;

use crate::error::{Error, ProxyErrorKind};
use crate::url::Target;

/// Where the proxy setting comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum ProxyChoice {
    /// `https_proxy` / `http_proxy` / `all_proxy` and `no_proxy`, either case (but
    /// `HTTP_PROXY` in a CGI program: see [`resolve`]).
    #[default]
    Environment,
    /// No proxy, whatever the environment says.
    Off,
    /// This proxy URL (`http://`, `socks5://` or `socks5h://`, with `user:pass@`).
    Url(String),
}

/// How to talk to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyKind {
    /// HTTP `CONNECT`.
    Http,
    /// SOCKS5; `remote_dns` (`socks5h://`) lets the proxy resolve the host name, else
    /// (`socks5://`) this side resolves it and sends the address.
    Socks5 { remote_dns: bool },
}

/// A proxy to tunnel through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proxy {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` value, from an HTTP proxy URL's credentials.
    pub authorization: Option<String>,
    /// User name and password, from a SOCKS5 proxy URL.
    pub credentials: Option<(String, String)>,
    /// `socks5://`: the target's address, resolved on this side.
    pub resolved: Option<IpAddr>,
}

fn invalid(url: &str, why: &str) -> Error {
    // The URL may hold a password: name its scheme and host only.
    let shown = url::Url::parse(url).map_or_else(
        |_| "<unparsable>".to_owned(),
        |u| format!("{}://{}", u.scheme(), u.host_str().unwrap_or("")),
    );
    Error::proxy(ProxyErrorKind::InvalidUrl, format!("proxy {shown}: {why}"))
}

impl Proxy {
    fn parse(url: &str) -> Result<Proxy, Error> {
        if !cfg!(feature = "proxy") {
            return Err(invalid(
                url,
                "this build has no proxy support (the `proxy` feature is off)",
            ));
        }
        // A bare `host:port`, as often found in the environment, means http://.
        let with_scheme = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let parsed =
            url::Url::parse(&with_scheme).map_err(|e| invalid(&with_scheme, &e.to_string()))?;
        let (kind, default_port) = match parsed.scheme() {
            "http" => (ProxyKind::Http, 80),
            "socks5" => (ProxyKind::Socks5 { remote_dns: false }, 1080),
            "socks5h" => (ProxyKind::Socks5 { remote_dns: true }, 1080),
            other => {
                return Err(invalid(
                    &with_scheme,
                    &format!("unsupported scheme {other:?} (use http://, socks5:// or socks5h://)"),
                ))
            }
        };
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(invalid(&with_scheme, "no host")),
        };
        let credentials = (!parsed.username().is_empty()).then(|| {
            let user = crate::url::percent_decode(parsed.username());
            let pass = crate::url::percent_decode(parsed.password().unwrap_or(""));
            (user, pass)
        });
        if let (ProxyKind::Socks5 { .. }, Some((user, pass))) = (kind, &credentials) {
            if user.len() > 255 || pass.len() > 255 {
                return Err(invalid(
                    &with_scheme,
                    "SOCKS5 user names and passwords are at most 255 bytes",
                ));
            }
        }
        let authorization = match (kind, &credentials) {
            (ProxyKind::Http, Some((user, pass))) => Some(format!(
                "Basic {}",
                crate::url::base64(format!("{user}:{pass}").as_bytes())
            )),
            _ => None,
        };
        Ok(Proxy {
            kind,
            host,
            port: parsed.port().unwrap_or(default_port),
            authorization,
            credentials: credentials.filter(|_| kind != ProxyKind::Http),
            resolved: None,
        })
    }

    /// The CONNECT request for `target`.
    pub fn connect_request(&self, target: &Target) -> Vec<u8> {
        let authority = if target.host.contains(':') {
            format!("[{}]:{}", target.host, target.port)
        } else {
            format!("{}:{}", target.host, target.port)
        };
        let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        request.into_bytes()
    }

    /// Starts setting up a tunnel to `target`.
    pub fn tunnel(&self, target: &Target) -> Tunnel {
        let (step, out) = match self.kind {
            ProxyKind::Http => (Step::HttpConnect, self.connect_request(target)),
            ProxyKind::Socks5 { .. } => {
                // Offer "no authentication", and username/password when we have them.
                let out = match self.credentials {
                    Some(_) => vec![5, 2, 0, 2],
                    None => vec![5, 1, 0],
                };
                (Step::SocksGreeting, out)
            }
        };
        Tunnel {
            step,
            out,
            written: 0,
            answer: Vec::new(),
        }
    }

    /// The SOCKS5 CONNECT request for `target` (RFC 1928 §4).
    fn socks_connect(&self, target: &Target) -> Result<Vec<u8>, Error> {
        let mut out = vec![5, 1, 0];
        let ip = target.host.parse::<IpAddr>().ok().or(self.resolved);
        match ip {
            Some(IpAddr::V4(ip)) => {
                out.push(1);
                out.extend_from_slice(&ip.octets());
            }
            Some(IpAddr::V6(ip)) => {
                out.push(4);
                out.extend_from_slice(&ip.octets());
            }
            None => {
                let name = target.host.as_bytes();
                if name.len() > 255 {
                    return Err(Error::proxy(
                        ProxyErrorKind::Refused,
                        "the host name is too long for SOCKS5",
                    ));
                }
                out.push(3);
                out.push(name.len() as u8);
                out.extend_from_slice(name);
            }
        }
        out.extend_from_slice(&target.port.to_be_bytes());
        Ok(out)
    }
}

/// Where a tunnel's set-up is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    HttpConnect,
    SocksGreeting,
    SocksAuth,
    SocksConnect,
}

/// A tunnel being set up: what is left to write, and the answer read so far.
#[derive(Debug)]
pub(crate) struct Tunnel {
    step: Step,
    pub out: Vec<u8>,
    pub written: usize,
    answer: Vec<u8>,
}

/// After bytes from the proxy: open, or more to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// The tunnel is open: what follows is the target's.
    Open,
    /// Waiting for more of the answer, or for `out` to be written.
    More,
}

impl Tunnel {
    /// Takes bytes read from the proxy.
    pub fn received(
        &mut self,
        bytes: &[u8],
        proxy: &Proxy,
        target: &Target,
    ) -> Result<Progress, Error> {
        self.answer.extend_from_slice(bytes);
        match self.step {
            Step::HttpConnect => match parse_connect_response(&self.answer)? {
                Some(()) => Ok(Progress::Open),
                None => Ok(Progress::More),
            },
            Step::SocksGreeting => {
                let Some(&[version, method]) = self.take(2).as_deref() else {
                    return Ok(Progress::More);
                };
                if version != 5 {
                    return Err(socks_invalid("the proxy does not speak SOCKS5"));
                }
                match (method, &proxy.credentials) {
                    (0, _) => self.next(Step::SocksConnect, proxy.socks_connect(target)?),
                    (2, Some((user, pass))) => {
                        // RFC 1929: version 1, then the name and the password.
                        let mut out = vec![1, user.len() as u8];
                        out.extend_from_slice(user.as_bytes());
                        out.push(pass.len() as u8);
                        out.extend_from_slice(pass.as_bytes());
                        self.next(Step::SocksAuth, out)
                    }
                    (0xff | 2, _) => Err(Error::proxy(
                        ProxyErrorKind::Auth,
                        "the SOCKS5 proxy accepts none of the offered authentication methods \
                         (give a user name and password in the proxy URL?)",
                    )),
                    (m, _) => Err(socks_invalid(&format!(
                        "the proxy chose method {m}, not offered"
                    ))),
                }
            }
            Step::SocksAuth => {
                let Some(&[_, status]) = self.take(2).as_deref() else {
                    return Ok(Progress::More);
                };
                if status != 0 {
                    return Err(Error::proxy(
                        ProxyErrorKind::Auth,
                        "the SOCKS5 proxy refused the user name and password",
                    ));
                }
                self.next(Step::SocksConnect, proxy.socks_connect(target)?)
            }
            Step::SocksConnect => {
                // VER REP RSV ATYP BND.ADDR BND.PORT
                let Some(&[version, reply, _, atyp, first]) = self.answer.get(..5) else {
                    return Ok(Progress::More);
                };
                if version != 5 {
                    return Err(socks_invalid("not a SOCKS5 reply"));
                }
                if reply != 0 {
                    return Err(Error::proxy(
                        ProxyErrorKind::Refused,
                        format!(
                            "the SOCKS5 proxy refused the tunnel: {} (reply {reply})",
                            socks_reply(reply)
                        ),
                    ));
                }
                let address = match atyp {
                    1 => 4,
                    4 => 16,
                    3 => 1 + usize::from(first),
                    other => return Err(socks_invalid(&format!("address type {other}"))),
                };
                let len = 4 + address + 2;
                if self.answer.len() < len {
                    return Ok(Progress::More);
                }
                if self.answer.len() > len {
                    return Err(socks_invalid(
                        "the proxy sent data before the tunnel was used",
                    ));
                }
                Ok(Progress::Open)
            }
        }
    }

    /// The first `n` bytes of the answer, once they are all here (and no more came).
    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        (self.answer.len() >= n).then(|| self.answer.drain(..n).collect())
    }

    fn next(&mut self, step: Step, out: Vec<u8>) -> Result<Progress, Error> {
        if !self.answer.is_empty() {
            return Err(socks_invalid("the proxy answered more than was asked"));
        }
        self.step = step;
        self.out = out;
        self.written = 0;
        Ok(Progress::More)
    }
}

fn socks_invalid(what: &str) -> Error {
    Error::proxy(
        ProxyErrorKind::InvalidResponse,
        format!("invalid SOCKS5 answer: {what}"),
    )
}

/// RFC 1928 §6's reply codes, in words.
fn socks_reply(code: u8) -> &'static str {
    match code {
        1 => "general failure",
        2 => "not allowed by the proxy's rules",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown reply",
    }
}

/// Checks a proxy URL given to the builder.
pub(crate) fn check_url(url: &str) -> Result<(), Error> {
    Proxy::parse(url).map(drop)
}

/// The proxy to use for `target`, if any. Loopback targets never use one from the
/// environment.
pub(crate) fn for_target(choice: &ProxyChoice, target: &Target) -> Result<Option<Proxy>, Error> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    resolve(choice, target, env)
}

fn resolve(
    choice: &ProxyChoice,
    target: &Target,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, Error> {
    match choice {
        ProxyChoice::Off => Ok(None),
        ProxyChoice::Url(url) => Proxy::parse(url).map(Some),
        // Without the feature the environment is not read at all.
        ProxyChoice::Environment if !cfg!(feature = "proxy") => Ok(None),
        // As Go's `ProxyFromEnvironment`: loopback never goes through an environment proxy.
        ProxyChoice::Environment if is_loopback(&target.host) => Ok(None),
        ProxyChoice::Environment => {
            let either = |name: &str| env(name).or_else(|| env(&name.to_uppercase()));
            let no_proxy = either("no_proxy").unwrap_or_default();
            if bypassed(&no_proxy, &target.host, target.port) {
                return Ok(None);
            }
            let scheme_proxy = if target.tls {
                either("https_proxy")
            } else if env("REQUEST_METHOD").is_some() {
                // httpoxy (CVE-2016-5385): in a CGI program a request's `Proxy:` header
                // arrives as `HTTP_PROXY`. As curl and Go, that one is not trusted there.
                if env("HTTP_PROXY").is_some() && env("http_proxy").is_none() {
                    log::warn!("HTTP_PROXY ignored in a CGI program (REQUEST_METHOD is set)");
                }
                env("http_proxy")
            } else {
                either("http_proxy")
            };
            // As curl: the scheme of the value picks the protocol (`socks5h://` in
            // `HTTPS_PROXY` works too).
            match scheme_proxy.or_else(|| either("all_proxy")) {
                Some(url) => Proxy::parse(&url).map(Some),
                None => Ok(None),
            }
        }
    }
}

/// Whether `host` is an address in the range `net`/`bits` (false for a malformed range).
fn in_range(net: &str, bits: &str, host: &str) -> bool {
    use std::net::IpAddr;
    let (Ok(net), Ok(bits), Ok(host)) = (
        net.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>(),
        bits.parse::<u32>(),
        host.parse::<IpAddr>(),
    ) else {
        return false;
    };
    let (net, host, width) = match (net, host) {
        (IpAddr::V4(n), IpAddr::V4(h)) => (u128::from(n.to_bits()), u128::from(h.to_bits()), 32),
        (IpAddr::V6(n), IpAddr::V6(h)) => (n.to_bits(), h.to_bits(), 128),
        _ => return false,
    };
    if bits > width {
        return false;
    }
    // The top `bits` of the address's `width`, compared.
    let mask = u128::MAX.checked_shl(width - bits).unwrap_or(0) & (u128::MAX >> (128 - width));
    net & mask == host & mask
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `no_proxy`: comma-separated host names (matching the name and its subdomains, a leading
/// `.` or `*.` allowed), IP addresses, CIDR ranges (`10.0.0.0/8`, `fd00::/8`: addresses in
/// the URL only, no name is resolved for them), optional `:port`, or `*` for everything.
fn bypassed(no_proxy: &str, host: &str, port: u16) -> bool {
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|pattern| {
            if pattern == "*" {
                return true;
            }
            if let Some((net, bits)) = pattern.split_once('/') {
                return in_range(net, bits, host);
            }
            let (name, pattern_port) = match pattern.rsplit_once(':') {
                Some((n, p)) if !n.contains(':') || n.ends_with(']') => (n, p.parse::<u16>().ok()),
                _ => (pattern, None),
            };
            if pattern_port.is_some_and(|p| p != port) {
                return false;
            }
            let name = name
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .trim_start_matches('[')
                .trim_end_matches(']');
            host.eq_ignore_ascii_case(name)
                || (host.len() > name.len()
                    && host[host.len() - name.len()..].eq_ignore_ascii_case(name)
                    && host.as_bytes()[host.len() - name.len() - 1] == b'.')
        })
}

/// Reads the proxy's answer to CONNECT with `httparse`: `Ok(Some(()))` once a complete
/// 2xx head arrived, `Ok(None)` while incomplete.
pub(crate) fn parse_connect_response(buf: &[u8]) -> Result<Option<()>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let end = match response.parse(buf) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) if buf.len() > 16 * 1024 => {
            return Err(Error::proxy(
                ProxyErrorKind::InvalidResponse,
                "the proxy's response head is too long",
            ));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            let first = buf.split(|&b| b == b'\n').next().unwrap_or_default();
            return Err(Error::Proxy {
                kind: ProxyErrorKind::InvalidResponse,
                message: format!(
                    "not an HTTP response: {:?}",
                    String::from_utf8_lossy(&first[..first.len().min(80)]).trim_end()
                ),
                source: Some(std::sync::Arc::new(e)),
            });
        }
    };
    let status = response.code.unwrap_or(0);
    let status_line = format!(
        "HTTP/1.{} {status} {}",
        response.version.unwrap_or(1),
        response.reason.unwrap_or("")
    );
    match status {
        200..=299 => {
            if end != buf.len() {
                return Err(Error::proxy(
                    ProxyErrorKind::InvalidResponse,
                    "the proxy sent data before the tunnel was used",
                ));
            }
            Ok(Some(()))
        }
        // A refusal usually has a body; the status line says all we need.
        407 => Err(Error::proxy(
            ProxyErrorKind::Auth,
            format!("the proxy wants credentials: {status_line}"),
        )),
        _ => Err(Error::proxy(
            ProxyErrorKind::Refused,
            format!("the proxy refused the tunnel: {status_line}"),
        )),
    }
}

#[cfg(test)]
#[cfg(feature = "proxy")]
mod tests {
    use super::*;

    /// A bare `user:password@host:port` with a bad port: neither the user nor the password
    /// shows in the error (the user was taken for a scheme until 2026-12-07).
    #[cfg(feature = "proxy")]
    #[test]
    fn a_bad_proxy_url_shows_no_credentials() {
        for url in [
            "pu:proxypw@127.0.0.1:99999",
            "http://pu:proxypw@127.0.0.1:99999",
        ] {
            let e = Proxy::parse(url).map(drop).expect_err("a bad port");
            let shown = format!("{e} {e:?}");
            assert!(
                !shown.contains("pu:") && !shown.contains("proxypw"),
                "{shown}"
            );
        }
    }

    fn target(url: &str) -> Target {
        crate::url::parse(url).unwrap()
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn socks_from_the_environment_as_curl_reads_it() {
        let env = env_of(&[("ALL_PROXY", "socks5h://p4:1081")]);
        let p = resolve(&ProxyChoice::Environment, &target("wss://e.com/"), env)
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.kind, p.port),
            (ProxyKind::Socks5 { remote_dns: true }, 1081)
        );
        let env = env_of(&[("HTTPS_PROXY", "socks5://p5")]);
        let p = resolve(&ProxyChoice::Environment, &target("wss://e.com/"), env)
            .unwrap()
            .unwrap();
        assert_eq!(p.kind, ProxyKind::Socks5 { remote_dns: false });
    }

    #[test]
    fn environment_variables_by_scheme_and_case() {
        let env = env_of(&[("HTTPS_PROXY", "http://p1:3128"), ("http_proxy", "p2:8080")]);
        let got = resolve(
            &ProxyChoice::Environment,
            &target("wss://example.com/"),
            &env,
        );
        assert_eq!(got.unwrap().unwrap().host, "p1");
        let got = resolve(
            &ProxyChoice::Environment,
            &target("ws://example.com/"),
            &env,
        );
        let p = got.unwrap().unwrap();
        assert_eq!((p.host.as_str(), p.port), ("p2", 8080));
        let env = env_of(&[("ALL_PROXY", "http://p3:1")]);
        let got = resolve(&ProxyChoice::Environment, &target("ws://example.com/"), env);
        assert_eq!(got.unwrap().unwrap().host, "p3");
    }

    /// httpoxy (CVE-2016-5385): in a CGI program (`REQUEST_METHOD` set) the server turns a
    /// request's `Proxy:` header into `HTTP_PROXY`, so any client of the CGI program could
    /// route its `ws://` connections through a proxy of its choosing. That variable used to
    /// be used; as curl and Go, it is not trusted there now.
    #[test]
    fn upper_case_http_proxy_is_not_trusted_in_a_cgi_program() {
        let t = target("ws://example.com/");
        let cgi = env_of(&[
            ("HTTP_PROXY", "http://evil:8080"),
            ("REQUEST_METHOD", "GET"),
        ]);
        assert!(resolve(&ProxyChoice::Environment, &t, &cgi)
            .unwrap()
            .is_none());
        // The lower-case one (no request header can set it) and the others still count.
        let cgi = env_of(&[
            ("HTTP_PROXY", "http://evil:8080"),
            ("http_proxy", "http://good:3128"),
            ("REQUEST_METHOD", "GET"),
        ]);
        let p = resolve(&ProxyChoice::Environment, &t, &cgi)
            .unwrap()
            .unwrap();
        assert_eq!(p.host, "good");
        let cgi = env_of(&[("HTTPS_PROXY", "http://corp:1"), ("REQUEST_METHOD", "GET")]);
        let p = resolve(&ProxyChoice::Environment, &target("wss://e.com/"), &cgi);
        assert_eq!(p.unwrap().unwrap().host, "corp");
        // Outside CGI, upper case as before.
        let plain = env_of(&[("HTTP_PROXY", "http://p:8080")]);
        let p = resolve(&ProxyChoice::Environment, &t, &plain)
            .unwrap()
            .unwrap();
        assert_eq!(p.host, "p");
    }

    #[test]
    fn no_proxy_and_loopback_bypass() {
        let env = env_of(&[
            ("https_proxy", "http://p:1"),
            ("no_proxy", "internal.corp, .svc:8443,10.0.0.1"),
        ]);
        let via = |url: &str| resolve(&ProxyChoice::Environment, &target(url), &env).unwrap();
        assert!(via("wss://internal.corp/").is_none());
        assert!(via("wss://a.internal.corp/").is_none());
        assert!(via("wss://notinternal.corp/").is_some());
        assert!(via("wss://x.svc:8443/").is_none());
        assert!(via("wss://x.svc/").is_some());
        assert!(via("wss://10.0.0.1/").is_none());
        assert!(via("wss://127.0.0.1:9/").is_none());
        assert!(via("wss://localhost/").is_none());
        assert!(via("wss://[::1]/").is_none());
        // CIDR ranges (as curl, Go and Python's websocket-client) match addresses only.
        let env = env_of(&[
            ("https_proxy", "http://p:1"),
            (
                "no_proxy",
                "192.168.0.0/16, fd00::/8,10.1.2.3/32, bad/99, 1.2.3.4/x",
            ),
        ]);
        let via = |url: &str| resolve(&ProxyChoice::Environment, &target(url), &env).unwrap();
        assert!(via("wss://192.168.3.4/").is_none());
        assert!(via("wss://192.169.0.1/").is_some());
        assert!(via("wss://[fd12::1]:8443/").is_none());
        assert!(via("wss://[fe80::1]/").is_some());
        assert!(via("wss://10.1.2.3/").is_none());
        assert!(via("wss://10.1.2.4/").is_some());
        assert!(via("wss://1.2.3.4/").is_some());
        assert!(via("wss://intranet/").is_some());
        let all = env_of(&[("https_proxy", "http://p:1"), ("NO_PROXY", "*")]);
        assert!(
            resolve(&ProxyChoice::Environment, &target("wss://e.com/"), all)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn explicit_and_off() {
        let env = env_of(&[("https_proxy", "http://p:1")]);
        let t = target("wss://e.com/");
        assert!(resolve(&ProxyChoice::Off, &t, &env).unwrap().is_none());
        let p = resolve(&ProxyChoice::Url("http://u:p%40ss@q:3128".into()), &t, &env)
            .unwrap()
            .unwrap();
        assert_eq!(p.host, "q");
        assert_eq!(p.authorization.as_deref(), Some("Basic dTpwQHNz"));
        assert!(matches!(
            resolve(&ProxyChoice::Url("socks4://q:1080".into()), &t, &env),
            Err(Error::Proxy {
                kind: ProxyErrorKind::InvalidUrl,
                ..
            })
        ));
        let p = resolve(&ProxyChoice::Url("socks5h://u:p%40ss@q".into()), &t, &env)
            .unwrap()
            .unwrap();
        assert_eq!(p.kind, ProxyKind::Socks5 { remote_dns: true });
        assert_eq!(p.port, 1080);
        assert_eq!(p.credentials, Some(("u".into(), "p@ss".into())));
        assert_eq!(p.authorization, None);
    }

    #[test]
    fn connect_request_and_response() {
        let p = Proxy::parse("http://u:p@q:1").unwrap();
        let req = String::from_utf8(p.connect_request(&target("wss://e.com:8443/x"))).unwrap();
        assert!(req.starts_with("CONNECT e.com:8443 HTTP/1.1\r\nHost: e.com:8443\r\n"));
        assert!(req.contains("Proxy-Authorization: Basic dTpw\r\n"));
        let req = String::from_utf8(p.connect_request(&target("ws://[2001:db8::1]/"))).unwrap();
        assert!(req.starts_with("CONNECT [2001:db8::1]:80 HTTP/1.1"));

        assert!(matches!(
            parse_connect_response(b"HTTP/1.1 200 OK\r\n"),
            Ok(None)
        ));
        assert!(matches!(
            parse_connect_response(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Ok(Some(()))
        ));
        assert!(matches!(
            parse_connect_response(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n<html>"),
            Err(Error::Proxy { kind: ProxyErrorKind::Auth, message, .. }) if message.contains("407")
        ));
        assert!(matches!(
            parse_connect_response(b"HTTP/1.0 200 OK\r\n\r\nextra"),
            Err(Error::Proxy { .. })
        ));
        assert!(matches!(
            parse_connect_response(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(Error::Proxy {
                kind: ProxyErrorKind::InvalidResponse,
                ..
            })
        ));
    }

    #[test]
    fn socks5_with_auth_then_connect_by_name() {
        let p = Proxy::parse("socks5h://al:pw@q:1").unwrap();
        let t = target("wss://e.com:8443/x");
        let mut tunnel = p.tunnel(&t);
        assert_eq!(tunnel.out, [5, 2, 0, 2]);
        assert_eq!(tunnel.received(&[5], &p, &t).unwrap(), Progress::More);
        assert_eq!(tunnel.received(&[2], &p, &t).unwrap(), Progress::More);
        assert_eq!(tunnel.out, b"\x01\x02al\x02pw");
        assert_eq!(tunnel.received(&[1, 0], &p, &t).unwrap(), Progress::More);
        assert_eq!(tunnel.out, b"\x05\x01\x00\x03\x05e.com\x20\xfb");
        let reply = [5, 0, 0, 1, 10, 0, 0, 1, 0x1f, 0x90];
        assert_eq!(
            tunnel.received(&reply[..6], &p, &t).unwrap(),
            Progress::More
        );
        assert_eq!(
            tunnel.received(&reply[6..], &p, &t).unwrap(),
            Progress::Open
        );
    }

    #[test]
    fn socks5_refusals_are_typed() {
        let t = target("ws://10.1.2.3:80/");
        let p = Proxy::parse("socks5://q:1").unwrap();
        let mut tunnel = p.tunnel(&t);
        assert_eq!(tunnel.out, [5, 1, 0]);
        assert!(matches!(
            tunnel.received(&[5, 0xff], &p, &t),
            Err(Error::Proxy {
                kind: ProxyErrorKind::Auth,
                ..
            })
        ));
        let mut tunnel = p.tunnel(&t);
        tunnel.received(&[5, 0], &p, &t).unwrap();
        assert_eq!(tunnel.out, [5, 1, 0, 1, 10, 1, 2, 3, 0, 80]);
        match tunnel.received(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0], &p, &t) {
            Err(Error::Proxy {
                kind: ProxyErrorKind::Refused,
                message,
                ..
            }) => assert!(message.contains("connection refused"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
