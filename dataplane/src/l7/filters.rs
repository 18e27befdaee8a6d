//! Route filters: a redirect answered by the proxy (Gateway API RequestRedirect) and changes
//! to the request head sent on (RequestHeaderModifier).
//!
//! A route carries the plain spec ([`Redirect`], [`HeaderModifier`]); the table compiles each
//! into a checked form ([`RedirectRule`], [`HeaderRewrite`]) once, so a request only copies
//! bytes: names and values that could break a head line or touch the framing never get this
//! far ([`FilterError`]).

use super::head::{is_tchar, valid_authority, FieldKind};
use std::io::Write as _;

/// The scheme of a redirect's location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `http`, default port 80.
    Http,
    /// `https`, default port 443.
    Https,
}

impl Scheme {
    /// As written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The port a URL of this scheme leaves out.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// How a redirect changes the path (the query string is always kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRewrite {
    /// The whole path becomes this.
    ReplaceFull(String),
    /// The prefix the route matched is replaced by this, element by element: `/foo` -> `/xyz`
    /// makes `/foo/bar` `/xyz/bar`; an empty replacement strips the prefix.
    ReplacePrefix(String),
}

/// A redirect's status code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedirectStatus {
    /// 301 Moved Permanently.
    MovedPermanently,
    /// 302 Found.
    #[default]
    Found,
}

impl RedirectStatus {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            RedirectStatus::MovedPermanently => 301,
            RedirectStatus::Found => 302,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            RedirectStatus::MovedPermanently => "Moved Permanently",
            RedirectStatus::Found => "Found",
        }
    }
}

/// A route that answers every request it matches with a redirect; each part not given is the
/// request's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redirect {
    /// The location's scheme; `None`: the request's (https on a TLS listener).
    pub scheme: Option<Scheme>,
    /// The location's host, a name or an IP literal without port; `None`: the request's.
    pub host: Option<String>,
    /// The location's port; `None`: the default port of `scheme` when it is given, else the
    /// request's. The scheme's default port is never written.
    pub port: Option<u16>,
    /// The path; `None`: the request's.
    pub path: Option<PathRewrite>,
    /// 301 or 302.
    pub status: RedirectStatus,
}

/// Changes to the request head sent to the backend. Names are case-insensitive: the request's
/// fields named in `remove` or `set` are dropped, then `set` and `add` are written after the
/// request's own fields (so `add` appends to what is there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    /// Fields replaced (every field of the name, or added when absent).
    pub set: Vec<(String, String)>,
    /// Fields appended.
    pub add: Vec<(String, String)>,
    /// Names of fields removed.
    pub remove: Vec<String>,
}

/// Why a filter cannot be used: the controlplane reports it with its place before a table is
/// built; a table given one anyway answers 500 on that route.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not an RFC 9110 token.
    #[error("{0:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")]
    Name(String),
    /// A field the proxy owns.
    #[error("header {0:?} may not be changed by a route: the proxy owns it (message framing, hop-by-hop or forwarding fields)")]
    Protected(String),
    /// The same name twice in one list.
    #[error("header {0:?} is listed twice (names are case-insensitive)")]
    Repeated(String),
    /// A value that could break the head.
    #[error("header {name:?} value {value:?} has control or non-ASCII characters")]
    Value {
        /// The field's name.
        name: String,
        /// The value.
        value: String,
    },
    /// A redirect host that is not a host.
    #[error("redirect host {0:?} is not a host name or IP address (without port)")]
    Host(String),
    /// Port 0.
    #[error("redirect port 0 is not a port")]
    Port,
    /// A path that is not an absolute path.
    #[error(
        "redirect path {0:?} must start with '/' and hold visible ASCII only, no query or fragment"
    )]
    Path(String),
}

/// A field a route may not set, add or remove: Host and the framing, hop-by-hop and forwarding
/// fields (the proxy writes those itself), and Trailer.
pub fn is_protected_header(name: &str) -> bool {
    FieldKind::of(name.as_bytes()) != FieldKind::Other || name.eq_ignore_ascii_case("trailer")
}

fn check_name(name: &str) -> Result<(), FilterError> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(FilterError::Name(name.into()));
    }
    if is_protected_header(name) {
        return Err(FilterError::Protected(name.into()));
    }
    Ok(())
}

fn check_path(path: &str, may_be_empty: bool) -> Result<(), FilterError> {
    let ok = (path.is_empty() && may_be_empty)
        || (path.starts_with('/')
            && path.bytes().all(|b| b.is_ascii_graphic())
            && !path.contains(['?', '#']));
    if ok {
        Ok(())
    } else {
        Err(FilterError::Path(path.into()))
    }
}

impl HeaderModifier {
    /// Every name a token the proxy does not own, each once per list; values without control
    /// characters (visible ASCII, spaces and tabs).
    pub fn check(&self) -> Result<(), FilterError> {
        let names = |list: &mut dyn Iterator<Item = &String>| -> Result<(), FilterError> {
            let mut seen: Vec<&str> = Vec::new();
            for name in list {
                check_name(name)?;
                if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                    return Err(FilterError::Repeated(name.clone()));
                }
                seen.push(name);
            }
            Ok(())
        };
        names(&mut self.set.iter().map(|(n, _)| n))?;
        names(&mut self.add.iter().map(|(n, _)| n))?;
        names(&mut self.remove.iter())?;
        for (name, value) in self.set.iter().chain(&self.add) {
            if value
                .bytes()
                .any(|b| b != b' ' && b != b'\t' && !b.is_ascii_graphic())
            {
                return Err(FilterError::Value {
                    name: name.clone(),
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }
}

impl Redirect {
    /// A host that is a name or an IP literal, a port above 0, paths that are paths (a prefix
    /// replacement may be empty).
    pub fn check(&self) -> Result<(), FilterError> {
        if let Some(host) = &self.host {
            let name = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            let ipv6 =
                host.starts_with('[') && host.ends_with(']') && valid_authority(host.as_bytes());
            if !(name || ipv6) {
                return Err(FilterError::Host(host.clone()));
            }
        }
        if self.port == Some(0) {
            return Err(FilterError::Port);
        }
        match &self.path {
            Some(PathRewrite::ReplaceFull(p)) => check_path(p, false),
            Some(PathRewrite::ReplacePrefix(p)) => check_path(p, true),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum NewPath {
    Full(Box<[u8]>),
    /// The replacement without its trailing slash.
    Prefix(Box<[u8]>),
}

/// A checked redirect of one route, ready to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectRule {
    scheme: Option<Scheme>,
    host: Option<Box<[u8]>>,
    port: Option<u16>,
    path: Option<NewPath>,
    status: RedirectStatus,
    /// The prefix the route matches, without its trailing slash (the route's whole path for
    /// an Exact route).
    matched: Box<[u8]>,
}

/// What a redirect is built from: the request's parts.
#[derive(Clone, Copy, Debug)]
pub struct RedirectFrom<'a> {
    /// The request came over TLS (its scheme is https).
    pub tls: bool,
    /// Its Host (or absolute-form authority), port included; empty when none.
    pub host: &'a [u8],
    /// Its target: path and query.
    pub target: &'a [u8],
}

impl RedirectRule {
    /// Checks `spec` for a route whose path match is `route_path` (with its trailing slash as
    /// written).
    pub fn compile(spec: &Redirect, route_path: &str) -> Result<RedirectRule, FilterError> {
        spec.check()?;
        Ok(RedirectRule {
            scheme: spec.scheme,
            host: spec
                .host
                .as_ref()
                .map(|h| h.to_ascii_lowercase().into_bytes().into()),
            port: spec.port,
            path: spec.path.as_ref().map(|p| match p {
                PathRewrite::ReplaceFull(p) => NewPath::Full(p.as_bytes().into()),
                PathRewrite::ReplacePrefix(p) => {
                    NewPath::Prefix(p.trim_end_matches('/').as_bytes().into())
                }
            }),
            status: spec.status,
            matched: route_path.trim_end_matches('/').as_bytes().into(),
        })
    }

    /// The status it answers.
    pub fn status(&self) -> RedirectStatus {
        self.status
    }

    /// Appends the Location value for `req` to `out`: `scheme://host[:port]/path[?query]`, or
    /// only the path and query when neither the rule nor the request names a host.
    pub fn write_location(&self, req: &RedirectFrom<'_>, out: &mut Vec<u8>) {
        let (req_host, req_port) = split_authority(req.host);
        let request_scheme = if req.tls { Scheme::Https } else { Scheme::Http };
        let scheme = self.scheme.unwrap_or(request_scheme);
        let host = self.host.as_deref().unwrap_or(req_host);
        if !host.is_empty() {
            // A scheme given without a port means that scheme's well-known port (Gateway API);
            // otherwise the port the request came to (which is the listener's).
            let port = match (self.port, self.scheme) {
                (Some(p), _) => p,
                (None, Some(s)) => s.default_port(),
                (None, None) => req_port.unwrap_or(request_scheme.default_port()),
            };
            out.extend_from_slice(scheme.as_str().as_bytes());
            out.extend_from_slice(b"://");
            out.extend_from_slice(host);
            if port != scheme.default_port() {
                // Writing into a Vec cannot fail.
                let _ = write!(out, ":{port}");
            }
        }
        let target = if req.target.starts_with(b"/") {
            req.target
        } else {
            // Absolute-form with an empty path ("http://h?q"), or asterisk-form.
            out.push(b'/');
            req.target.strip_prefix(b"*").unwrap_or(req.target)
        };
        let q = target
            .iter()
            .position(|&b| b == b'?')
            .unwrap_or(target.len());
        let (path, query) = target.split_at(q);
        match &self.path {
            None => out.extend_from_slice(path),
            Some(NewPath::Full(p)) => out.extend_from_slice(p),
            Some(NewPath::Prefix(p)) => {
                // The route matched `matched` element-wise, so the rest is empty or starts with
                // '/'; a path from another rule (cannot happen) is left whole.
                let rest = path.strip_prefix(&*self.matched).unwrap_or(path);
                if p.is_empty() && rest.is_empty() {
                    out.push(b'/');
                } else {
                    out.extend_from_slice(p);
                    out.extend_from_slice(rest);
                }
            }
        }
        out.extend_from_slice(query);
    }

    /// Appends the whole answer for `req` to `out`: the status, Location and a one-line body
    /// (left out when `head`: the answer to a HEAD request has none); `close` adds
    /// `connection: close`.
    pub fn write_answer(&self, req: &RedirectFrom<'_>, close: bool, head: bool, out: &mut Vec<u8>) {
        let (code, reason) = (self.status.code(), self.status.reason());
        let _ = write!(out, "HTTP/1.1 {code} {reason}\r\nlocation: ");
        self.write_location(req, out);
        // The body is "<code> <reason>\n".
        let body_len = 3 + 1 + reason.len() + 1;
        let _ = write!(
            out,
            "\r\ncontent-type: text/plain\r\ncontent-length: {body_len}\r\n"
        );
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head {
            let _ = writeln!(out, "{code} {reason}");
        }
    }
}

/// `host[:port]` -> (host, port); an IPv6 literal keeps its brackets.
fn split_authority(authority: &[u8]) -> (&[u8], Option<u16>) {
    let colon = if authority.starts_with(b"[") {
        authority
            .iter()
            .position(|&b| b == b']')
            .and_then(|end| (authority.get(end + 1) == Some(&b':')).then_some(end + 1))
    } else {
        authority.iter().rposition(|&b| b == b':')
    };
    match colon {
        Some(i) => {
            let port = std::str::from_utf8(&authority[i + 1..])
                .ok()
                .and_then(|p| p.parse().ok());
            (&authority[..i], port)
        }
        None => (authority, None),
    }
}

/// A checked header modifier of one route: names to drop, and the lines to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderRewrite {
    /// Lowercased names whose fields are dropped from the request (`remove` and `set`).
    drop: Box<[Box<[u8]>]>,
    /// `name: value\r\n` for every `set` then every `add`, rendered once.
    lines: Box<[u8]>,
}

impl HeaderRewrite {
    /// Checks `spec` and renders it.
    pub fn compile(spec: &HeaderModifier) -> Result<HeaderRewrite, FilterError> {
        spec.check()?;
        let drop = spec
            .remove
            .iter()
            .chain(spec.set.iter().map(|(n, _)| n))
            .map(|n| n.to_ascii_lowercase().into_bytes().into_boxed_slice())
            .collect();
        let mut lines = Vec::new();
        for (name, value) in spec.set.iter().chain(&spec.add) {
            lines.extend_from_slice(name.as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(value.as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
        Ok(HeaderRewrite {
            drop,
            lines: lines.into(),
        })
    }

    /// The request's field named `name` is not sent on.
    pub fn drops(&self, name: &[u8]) -> bool {
        self.drop.iter().any(|d| d.eq_ignore_ascii_case(name))
    }

    /// The fields to write after the request's own.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(spec: Redirect, route: &str, tls: bool, host: &str, target: &str) -> String {
        let rule = RedirectRule::compile(&spec, route).unwrap();
        let mut out = Vec::new();
        rule.write_location(
            &RedirectFrom {
                tls,
                host: host.as_bytes(),
                target: target.as_bytes(),
            },
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn location_defaults_come_from_the_request() {
        let none = Redirect::default();
        assert_eq!(
            location(none.clone(), "/", false, "a.test", "/x?q=1"),
            "http://a.test/x?q=1"
        );
        assert_eq!(
            location(none.clone(), "/", true, "a.test:8443", "/x"),
            "https://a.test:8443/x"
        );
        // The request's port is the scheme's default: left out.
        assert_eq!(
            location(none.clone(), "/", true, "a.test:443", "/"),
            "https://a.test/"
        );
        assert_eq!(
            location(none.clone(), "/", false, "[2001:db8::1]:8080", "/"),
            "http://[2001:db8::1]:8080/"
        );
        // No host anywhere (HTTP/1.0): a relative location.
        assert_eq!(location(none.clone(), "/", false, "", "/p?q"), "/p?q");
        // Absolute-form target with an empty path.
        assert_eq!(
            location(none, "/", false, "a.test", "?q"),
            "http://a.test/?q"
        );
    }

    #[test]
    fn location_for_each_part() {
        let https = Redirect {
            scheme: Some(Scheme::Https),
            ..Default::default()
        };
        // A scheme without a port: that scheme's port, whatever the request's.
        assert_eq!(
            location(https.clone(), "/", false, "a.test:8080", "/x?y"),
            "https://a.test/x?y"
        );
        let https_port = Redirect {
            port: Some(8443),
            ..https.clone()
        };
        assert_eq!(
            location(https_port, "/", false, "a.test", "/"),
            "https://a.test:8443/"
        );
        let http_443 = Redirect {
            scheme: Some(Scheme::Http),
            port: Some(443),
            ..Default::default()
        };
        assert_eq!(
            location(http_443, "/", true, "a.test", "/"),
            "http://a.test:443/"
        );
        let host = Redirect {
            host: Some("B.Test".into()),
            ..Default::default()
        };
        // A new host keeps the request's port (the listener's).
        assert_eq!(
            location(host.clone(), "/", false, "a.test:8080", "/"),
            "http://b.test:8080/"
        );
        assert_eq!(location(host, "/", false, "", "/"), "http://b.test/");
        let port = Redirect {
            port: Some(80),
            ..Default::default()
        };
        assert_eq!(
            location(port, "/", false, "a.test:8080", "/"),
            "http://a.test/"
        );
        let full = Redirect {
            path: Some(PathRewrite::ReplaceFull("/new".into())),
            ..Default::default()
        };
        assert_eq!(
            location(full, "/old", false, "a.test", "/old/x?k=v"),
            "http://a.test/new?k=v"
        );
        let all = Redirect {
            scheme: Some(Scheme::Https),
            host: Some("c.test".into()),
            port: Some(8443),
            path: Some(PathRewrite::ReplacePrefix("/v2".into())),
            status: RedirectStatus::MovedPermanently,
        };
        assert_eq!(
            location(all, "/v1", false, "a.test", "/v1/items?x"),
            "https://c.test:8443/v2/items?x"
        );
    }

    #[test]
    fn prefix_replacement_is_element_wise() {
        // (request path, route prefix, replacement, location path): Gateway API's table.
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/", "", "/foo/bar"),
            ("/foo/", "/", "", "/foo/"),
            ("/foo/bar", "/", "/xyz", "/xyz/foo/bar"),
            ("/foo/", "/", "/xyz", "/xyz/foo/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
        ];
        for (path, prefix, replacement, want) in cases {
            let spec = Redirect {
                path: Some(PathRewrite::ReplacePrefix(replacement.into())),
                ..Default::default()
            };
            assert_eq!(
                location(spec, prefix, false, "", &format!("{path}?q")),
                format!("{want}?q"),
                "{path} {prefix} {replacement:?}"
            );
        }
    }

    #[test]
    fn answer_is_framed_and_keeps_alive_unless_told() {
        let rule = RedirectRule::compile(
            &Redirect {
                status: RedirectStatus::MovedPermanently,
                scheme: Some(Scheme::Https),
                ..Default::default()
            },
            "/",
        )
        .unwrap();
        let req = RedirectFrom {
            tls: false,
            host: b"a.test",
            target: b"/x",
        };
        let mut out = Vec::new();
        rule.write_answer(&req, false, false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 301 Moved Permanently\r\nlocation: https://a.test/x\r\n\
content-type: text/plain\r\ncontent-length: 22\r\n\r\n301 Moved Permanently\n"
        );
        let found = RedirectRule::compile(&Redirect::default(), "/").unwrap();
        let mut out = Vec::new();
        found.write_answer(&req, true, false, &mut out);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 302 Found\r\n"), "{head}");
        assert!(
            head.ends_with("content-length: 10\r\nconnection: close"),
            "{head}"
        );
        assert_eq!(body, "302 Found\n");
        // To HEAD: the same head, no body.
        let mut out = Vec::new();
        found.write_answer(&req, true, true, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), format!("{head}\r\n\r\n"));
    }

    #[test]
    fn bad_redirects_are_refused() {
        let bad = |r: Redirect| r.check().unwrap_err();
        for host in ["", "a.test:80", "a b", "a/b", "u@a", "a\r\nx: y"] {
            assert_eq!(
                bad(Redirect {
                    host: Some(host.into()),
                    ..Default::default()
                }),
                FilterError::Host(host.into()),
                "{host:?}"
            );
        }
        assert!(Redirect {
            host: Some("[2001:db8::1]".into()),
            ..Default::default()
        }
        .check()
        .is_ok());
        assert_eq!(
            bad(Redirect {
                port: Some(0),
                ..Default::default()
            }),
            FilterError::Port
        );
        for p in ["", "x", "/a b", "/a?b", "/a\r\n"] {
            let full = Redirect {
                path: Some(PathRewrite::ReplaceFull(p.into())),
                ..Default::default()
            };
            assert_eq!(bad(full), FilterError::Path(p.into()), "{p:?}");
        }
        assert!(Redirect {
            path: Some(PathRewrite::ReplacePrefix(String::new())),
            ..Default::default()
        }
        .check()
        .is_ok());
    }

    #[test]
    fn header_modifier_is_checked() {
        let m = |set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]| HeaderModifier {
            set: set
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
            add: add
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
            remove: remove.iter().map(|n| (*n).into()).collect(),
        };
        assert!(m(&[("X-A", "1 2\t3")], &[("X-A", "4")], &["x-b"])
            .check()
            .is_ok());
        for name in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "Connection",
            "Keep-Alive",
            "TE",
            "Upgrade",
            "Trailer",
            "X-Forwarded-For",
            "Forwarded",
        ] {
            assert_eq!(
                m(&[], &[], &[name]).check(),
                Err(FilterError::Protected(name.into()))
            );
        }
        assert_eq!(
            m(&[("X A", "1")], &[], &[]).check(),
            Err(FilterError::Name("X A".into()))
        );
        assert_eq!(
            m(&[("X-A", "1"), ("x-a", "2")], &[], &[]).check(),
            Err(FilterError::Repeated("x-a".into()))
        );
        assert_eq!(
            m(&[], &[("X-A", "1\r\nX-Evil: 1")], &[]).check(),
            Err(FilterError::Value {
                name: "X-A".into(),
                value: "1\r\nX-Evil: 1".into()
            })
        );
        assert!(m(&[], &[("X-A", "é")], &[]).check().is_err());
    }
}
