//! WebSocket URL checks, done synchronously before any thread starts (contract rule 1).

use url::Url;

use crate::error::{Error, UrlError};

/// A checked WebSocket URL and what the I/O thread needs from it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The URL as the user sees it: scheme mapped to ws/wss, userinfo removed.
    pub url: Url,
    /// TLS or not, chosen by the scheme only, never by the port.
    pub tls: bool,
    /// Host name or IP literal, without brackets.
    pub host: String,
    pub port: u16,
    /// `user:password` from the URL, percent-decoded, for `Authorization: Basic`.
    pub credentials: Option<String>,
}

pub(crate) fn parse(input: &str) -> Result<Target, Error> {
    let mut url = Url::parse(input).map_err(|e| UrlError::Parse(e.to_string()))?;
    let tls = match url.scheme() {
        "ws" | "http" => false,
        "wss" | "https" => true,
        other => return Err(UrlError::Scheme(other.to_owned()).into()),
    };
    if url.fragment().is_some() {
        return Err(UrlError::Fragment.into());
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(UrlError::NoHost.into()),
    };
    // Map http(s) to ws(s) as the browser does. `set_scheme` refuses to switch between
    // "special" schemes and the others, so rebuild the URL from its text.
    if matches!(url.scheme(), "http" | "https") {
        let rest = &url.as_str()[url.scheme().len()..];
        let mapped = format!("{}{rest}", if tls { "wss" } else { "ws" });
        url = Url::parse(&mapped).map_err(|e| UrlError::Parse(e.to_string()))?;
    }
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let credentials = if url.username().is_empty() && url.password().is_none() {
        None
    } else {
        let user = percent_decode(url.username());
        let pass = percent_decode(url.password().unwrap_or(""));
        // Removing userinfo from a URL with a host cannot fail; ignore the unit error.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Some(format!("{user}:{pass}"))
    };
    Ok(Target {
        url,
        tls,
        host,
        port,
        credentials,
    })
}

/// Percent-decoding of URL userinfo (`percent-encoding`, which `url` itself uses).
/// `s` (a URL, or what a server sent as one) with any `user:password@` taken out of its
/// authority, for error messages and logs.
pub(crate) fn without_userinfo(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_owned();
    };
    let start = scheme_end + 3;
    let authority_end = s[start..]
        .find(['/', '?', '#'])
        .map_or(s.len(), |i| start + i);
    match s[start..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &s[..start], &s[start + at + 1..]),
        None => s.to_owned(),
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// RFC 7230 `token`: what a subprotocol name must be (RFC 6455 §4.1).
pub(crate) fn check_subprotocols(protocols: &[String]) -> Result<(), Error> {
    for (i, p) in protocols.iter().enumerate() {
        if !is_token(p) || protocols[..i].contains(p) {
            return Err(Error::InvalidSubprotocol(p.clone()));
        }
    }
    Ok(())
}

/// Whether `s` is an HTTP token (RFC 9110 §5.6.2): one or more tchars.
pub(crate) fn is_token(s: &str) -> bool {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    !s.is_empty() && s.chars().all(tchar)
}

/// Standard base64 with padding, for `Authorization: Basic` (`data-encoding`, which
/// tungstenite uses for `Sec-WebSocket-Key`).
pub(crate) fn base64(input: &[u8]) -> String {
    data_encoding::BASE64.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_err(s: &str) -> UrlError {
        match parse(s) {
            Err(Error::Url(e)) => e,
            other => panic!("{s}: expected a URL error, got {other:?}"),
        }
    }

    #[test]
    fn schemes_map_like_the_browser() {
        let t = parse("http://example.com/a?b=c").unwrap();
        assert_eq!(t.url.as_str(), "ws://example.com/a?b=c");
        assert!(!t.tls);
        assert_eq!(t.port, 80);
        let t = parse("https://example.com").unwrap();
        assert_eq!(t.url.scheme(), "wss");
        assert!(t.tls);
        assert_eq!(t.port, 443);
    }

    #[test]
    fn tls_follows_scheme_not_port() {
        assert!(!parse("ws://h:443/").unwrap().tls);
        assert!(parse("wss://h:80/").unwrap().tls);
        assert_eq!(parse("wss://h:80/").unwrap().port, 80);
    }

    #[test]
    fn path_and_query_are_kept() {
        let t = parse("ws://127.0.0.1:9/chat/room%201?x=1&y=%2F").unwrap();
        assert_eq!(t.url.path(), "/chat/room%201");
        assert_eq!(t.url.query(), Some("x=1&y=%2F"));
    }

    #[test]
    fn bad_urls_are_syntax_errors() {
        assert!(matches!(url_err("ftp://h/"), UrlError::Scheme(s) if s == "ftp"));
        assert_eq!(url_err("ws://h/#frag"), UrlError::Fragment);
        assert!(matches!(url_err("not a url"), UrlError::Parse(_)));
        // WHATWG parsing (the browser's) reads `ws:///x` as host `x`; these have none.
        assert!(matches!(
            url_err("ws://"),
            UrlError::NoHost | UrlError::Parse(_)
        ));
        assert!(matches!(
            url_err("ws://:80/"),
            UrlError::NoHost | UrlError::Parse(_)
        ));
    }

    #[test]
    fn ipv6_hosts_lose_brackets() {
        let t = parse("ws://[::1]:8080/").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.port, 8080);
    }

    #[test]
    fn userinfo_becomes_credentials_and_leaves_the_url() {
        let t = parse("ws://al%20ice:s%3Acret@h/").unwrap();
        assert_eq!(t.credentials.as_deref(), Some("al ice:s:cret"));
        assert_eq!(t.url.as_str(), "ws://h/");
    }

    #[test]
    fn subprotocol_tokens() {
        let ok =
            |v: &[&str]| check_subprotocols(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&["chat", "v2.json"]).is_ok());
        assert!(matches!(ok(&["a b"]), Err(Error::InvalidSubprotocol(_))));
        assert!(matches!(ok(&[""]), Err(Error::InvalidSubprotocol(_))));
        assert!(matches!(ok(&["chat", "chat"]), Err(Error::InvalidSubprotocol(p)) if p == "chat"));
        assert!(matches!(ok(&["a,b"]), Err(Error::InvalidSubprotocol(_))));
    }

    #[test]
    fn userinfo_is_taken_out_of_urls_for_messages() {
        for (given, shown) in [
            ("ws://user:pw@host:9/p?q#f", "ws://host:9/p?q#f"),
            ("ftp://u:p@h", "ftp://h"),
            ("ws://host/a@b", "ws://host/a@b"),
            ("ws://a:b@c@host/", "ws://host/"),
            ("/relative@path", "/relative@path"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(without_userinfo(given), shown);
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
