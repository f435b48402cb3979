//! HTTP CONNECT proxies: from the builder or from the usual environment variables.

use crate::error::Error;
use crate::url::Target;

/// Where the proxy setting comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum ProxyChoice {
    /// `https_proxy` / `http_proxy` / `all_proxy` and `no_proxy`, either case.
    #[default]
    Environment,
    /// No proxy, whatever the environment says.
    Off,
    /// This proxy URL (`http://[user:pass@]host:port`), still subject to `no_proxy`
    /// patterns given with it.
    Url(String),
}

/// A proxy to tunnel through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proxy {
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` value, from the proxy URL's credentials.
    pub authorization: Option<String>,
}

impl Proxy {
    fn parse(url: &str) -> Result<Proxy, Error> {
        let bad = |why: &str| Error::Proxy(format!("proxy URL {url:?}: {why}"));
        // A bare `host:port`, as often found in the environment, means http://.
        let with_scheme = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let parsed = url::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
        if parsed.scheme() != "http" {
            return Err(bad("only http:// proxies (HTTP CONNECT) are supported"));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(bad("no host")),
        };
        let authorization = (!parsed.username().is_empty()).then(|| {
            let user = crate::url::percent_decode(parsed.username());
            let pass = crate::url::percent_decode(parsed.password().unwrap_or(""));
            format!(
                "Basic {}",
                crate::url::base64(format!("{user}:{pass}").as_bytes())
            )
        });
        Ok(Proxy {
            host,
            port: parsed.port_or_known_default().unwrap_or(80),
            authorization,
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
        // As Go's `ProxyFromEnvironment`: loopback never goes through an environment proxy.
        ProxyChoice::Environment if is_loopback(&target.host) => Ok(None),
        ProxyChoice::Environment => {
            let either = |name: &str| env(name).or_else(|| env(&name.to_uppercase()));
            let no_proxy = either("no_proxy").unwrap_or_default();
            if bypassed(&no_proxy, &target.host, target.port) {
                return Ok(None);
            }
            let scheme_var = if target.tls {
                "https_proxy"
            } else {
                "http_proxy"
            };
            match either(scheme_var).or_else(|| either("all_proxy")) {
                Some(url) => Proxy::parse(&url).map(Some),
                None => Ok(None),
            }
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `no_proxy`: comma-separated host names (matching the name and its subdomains, a leading
/// `.` or `*.` allowed), IP addresses, optional `:port`, or `*` for everything.
fn bypassed(no_proxy: &str, host: &str, port: u16) -> bool {
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|pattern| {
            if pattern == "*" {
                return true;
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

/// Reads the proxy's answer to CONNECT: `Ok(Some(()))` once a complete 2xx head arrived,
/// `Ok(None)` while incomplete.
pub(crate) fn parse_connect_response(buf: &[u8]) -> Result<Option<()>, Error> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            return Err(Error::Proxy("the proxy's response head is too long".into()));
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200..=299) if version.starts_with("HTTP/1.") => {
            if end + 4 != buf.len() {
                return Err(Error::Proxy(
                    "the proxy sent data before the tunnel was used".into(),
                ));
            }
            Ok(Some(()))
        }
        // A refusal usually has a body; the status line says all we need.
        Some(_) => Err(Error::Proxy(format!(
            "the proxy refused the tunnel: {status_line}"
        ))),
        None => Err(Error::Proxy(format!(
            "not an HTTP response: {status_line:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            resolve(&ProxyChoice::Url("socks5://q:1080".into()), &t, &env),
            Err(Error::Proxy(_))
        ));
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
            Err(Error::Proxy(m)) if m.contains("407")
        ));
        assert!(matches!(
            parse_connect_response(b"HTTP/1.0 200 OK\r\n\r\nextra"),
            Err(Error::Proxy(_))
        ));
    }
}
