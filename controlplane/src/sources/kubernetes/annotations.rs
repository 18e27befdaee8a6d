//! ingress-nginx annotations (`nginx.ingress.kubernetes.io/...`) parsed into typed values.
//!
//! Every value has a strict grammar and a bounded length; a value that does not parse is
//! ignored (the rest of the object is served) and reported as `InvalidAnnotation`. Snippets
//! (`*-snippet`) are never honored: they were nginx config text, the very thing
//! IngressNightmare (CVE-2025-1974) abused. Nothing parsed here ever becomes config text: the
//! result is typed fields (numbers, enums, header and cookie names checked as RFC 9110 tokens).
//!
//! Pure: annotations in, values and problems out.

use std::collections::BTreeMap;
use std::time::Duration;

/// The prefix of the annotations read here.
pub const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// Our own annotations (Service type LoadBalancer): mode, weight, affinity, VM mode.
pub const OURS: &str = "lb.example.com/";

/// An object whose annotations (names and values) add up to more than this is skipped whole.
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

/// Longest value read (longer: invalid). Header and cookie names are far shorter.
const MAX_VALUE: usize = 256;

/// Longest name or value quoted in a message.
const MAX_QUOTE: usize = 64;

/// Longest timeout an annotation may set.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Largest body size an annotation may set (64 GiB).
const MAX_BODY: u64 = 64 << 30;

/// `canary-weight-total` at most (ingress-nginx's bound is its own; weights in lb are relative
/// and at most 1,000,000 per upstream).
const MAX_WEIGHT_TOTAL: u32 = 1_000_000;

/// The canary annotations of one Ingress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Canary {
    /// `canary: "true"`: this Ingress is a canary of the main Ingress with the same host and
    /// path (it is not served by itself).
    pub enabled: bool,
    /// `canary-weight`: the canary's share, out of `weight_total`.
    pub weight: Option<u32>,
    /// `canary-weight-total` (default 100).
    pub weight_total: u32,
    /// `canary-by-header`: requests with this header go to the canary (value `always`, or
    /// `by_header_value`).
    pub by_header: Option<String>,
    /// `canary-by-header-value`.
    pub by_header_value: Option<String>,
    /// `canary-by-cookie`: a cookie of this name set to `always` sends to the canary, `never`
    /// keeps away from it.
    pub by_cookie: Option<String>,
}

/// `upstream-hash-by`: what requests are hashed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashBy {
    /// `$remote_addr`.
    RemoteAddr,
    /// `$http_<name>` (the header `<name>`, `_` read as `-`).
    Header(String),
    /// `$cookie_<name>`.
    Cookie(String),
}

/// `backend-protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendProtocol {
    /// Plain HTTP (the default).
    Http,
    /// TLS to the backends.
    Https,
}

/// What the annotations of one Ingress say, typed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngressAnnotations {
    /// Canary settings.
    pub canary: Canary,
    /// `affinity: cookie` with `session-cookie-name` (default `INGRESSCOOKIE`): hash on that
    /// cookie (lb does not set the cookie).
    pub affinity_cookie: Option<String>,
    /// `upstream-hash-by`.
    pub hash_by: Option<HashBy>,
    /// `backend-protocol`.
    pub backend_protocol: Option<BackendProtocol>,
    /// `ssl-redirect`.
    pub ssl_redirect: Option<bool>,
    /// `force-ssl-redirect`.
    pub force_ssl_redirect: Option<bool>,
    /// `proxy-connect-timeout` (seconds).
    pub proxy_connect_timeout: Option<Duration>,
    /// `proxy-read-timeout` (seconds).
    pub proxy_read_timeout: Option<Duration>,
    /// `proxy-send-timeout` (seconds).
    pub proxy_send_timeout: Option<Duration>,
    /// `proxy-body-size` (`0`: unlimited, else bytes with an optional k/m/g unit).
    pub proxy_body_size: Option<u64>,
}

/// One annotation that was not used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotationProblem {
    /// `InvalidAnnotation`, `SnippetRefused` or `UnsupportedAnnotation`.
    pub reason: &'static str,
    /// What is wrong (names and values quoted and cut).
    pub message: String,
}

/// The annotations are too large to read: the object is skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooLarge {
    /// Their total size in bytes.
    pub bytes: usize,
}

/// Total size of `annotations` (names and values), or [`TooLarge`].
pub fn check_size(annotations: Option<&BTreeMap<String, String>>) -> Result<(), TooLarge> {
    let bytes: usize = annotations
        .into_iter()
        .flatten()
        .map(|(k, v)| k.len().saturating_add(v.len()))
        .fold(0usize, usize::saturating_add);
    if bytes > MAX_ANNOTATION_BYTES {
        Err(TooLarge { bytes })
    } else {
        Ok(())
    }
}

/// `s` quoted for a message, cut to a bounded length.
pub fn quote(s: &str) -> String {
    if s.len() <= MAX_QUOTE {
        format!("{s:?}")
    } else {
        let mut end = MAX_QUOTE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}... ({} bytes)", &s[..end], s.len())
    }
}

/// Parses the `nginx.ingress.kubernetes.io/` annotations of an Ingress; the caller checked
/// the size first ([`check_size`]).
pub fn parse_ingress(
    annotations: Option<&BTreeMap<String, String>>,
) -> (IngressAnnotations, Vec<AnnotationProblem>) {
    let mut out = IngressAnnotations {
        canary: Canary {
            weight_total: 100,
            ..Canary::default()
        },
        ..IngressAnnotations::default()
    };
    let mut problems = Vec::new();
    let Some(annotations) = annotations else {
        return (out, problems);
    };
    let mut affinity = false;
    let mut cookie_name = None;
    for (name, value) in annotations {
        let Some(key) = name.strip_prefix(NGINX) else {
            continue;
        };
        let invalid = |why: &str| AnnotationProblem {
            reason: "InvalidAnnotation",
            message: format!(
                "annotation {} value {}: {why}; ignored",
                quote(name),
                quote(value)
            ),
        };
        if key.ends_with("-snippet") || key == "configuration-snippet" {
            problems.push(AnnotationProblem {
                reason: "SnippetRefused",
                message: format!(
                    "annotation {}: snippets are nginx config text and are never honored",
                    quote(name)
                ),
            });
            continue;
        }
        if value.len() > MAX_VALUE {
            problems.push(invalid(&format!("longer than {MAX_VALUE} bytes")));
            continue;
        }
        let v = value.trim();
        let result: Result<(), String> = match key {
            "canary" => boolean(v).map(|b| out.canary.enabled = b),
            "canary-weight" => number(v, 0, MAX_WEIGHT_TOTAL).map(|n| out.canary.weight = Some(n)),
            "canary-weight-total" => {
                number(v, 1, MAX_WEIGHT_TOTAL).map(|n| out.canary.weight_total = n)
            }
            "canary-by-header" => token(v).map(|t| out.canary.by_header = Some(t)),
            "canary-by-header-value" => {
                header_value(v).map(|t| out.canary.by_header_value = Some(t))
            }
            "canary-by-cookie" => token(v).map(|t| out.canary.by_cookie = Some(t)),
            "affinity" => match v {
                "cookie" => {
                    affinity = true;
                    Ok(())
                }
                _ => Err("expected \"cookie\"".into()),
            },
            "session-cookie-name" => token(v).map(|t| cookie_name = Some(t)),
            "upstream-hash-by" => hash_by(v).map(|h| out.hash_by = Some(h)),
            "backend-protocol" => match v.to_ascii_uppercase().as_str() {
                "HTTP" => {
                    out.backend_protocol = Some(BackendProtocol::Http);
                    Ok(())
                }
                "HTTPS" => {
                    out.backend_protocol = Some(BackendProtocol::Https);
                    Ok(())
                }
                "GRPC" | "GRPCS" | "AJP" | "FCGI" => {
                    problems.push(AnnotationProblem {
                        reason: "UnsupportedAnnotation",
                        message: format!(
                            "annotation {} value {}: only HTTP and HTTPS backends are supported; plain HTTP is used",
                            quote(name),
                            quote(value)
                        ),
                    });
                    continue;
                }
                _ => Err("expected HTTP or HTTPS".into()),
            },
            "ssl-redirect" => boolean(v).map(|b| out.ssl_redirect = Some(b)),
            "force-ssl-redirect" => boolean(v).map(|b| out.force_ssl_redirect = Some(b)),
            "proxy-connect-timeout" => seconds(v).map(|d| out.proxy_connect_timeout = Some(d)),
            "proxy-read-timeout" => seconds(v).map(|d| out.proxy_read_timeout = Some(d)),
            "proxy-send-timeout" => seconds(v).map(|d| out.proxy_send_timeout = Some(d)),
            "proxy-body-size" => size(v).map(|n| out.proxy_body_size = Some(n)),
            _ => {
                problems.push(AnnotationProblem {
                    reason: "UnsupportedAnnotation",
                    message: format!("annotation {} is not supported; ignored", quote(name)),
                });
                continue;
            }
        };
        if let Err(why) = result {
            problems.push(invalid(&why));
        }
    }
    if affinity {
        out.affinity_cookie = Some(cookie_name.unwrap_or_else(|| "INGRESSCOOKIE".into()));
    }
    (out, problems)
}

/// `"true"` or `"false"`.
fn boolean(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected \"true\" or \"false\"".into()),
    }
}

/// An RFC 9110 token: header names, cookie names, methods.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Decimal digits (at most 10), within `lo..=hi`.
fn number(v: &str, lo: u32, hi: u32) -> Result<u32, String> {
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a whole number".into());
    }
    match v.parse::<u64>() {
        Ok(n) if (u64::from(lo)..=u64::from(hi)).contains(&n) => Ok(n as u32),
        _ => Err(format!("expected a number in {lo}..={hi}")),
    }
}

/// An RFC 9110 token of at most 64 bytes (header and cookie names).
fn token(v: &str) -> Result<String, String> {
    if v.len() <= 64 && is_token(v) {
        Ok(v.to_string())
    } else {
        Err("expected a header or cookie name (letters, digits and !#$%&'*+-.^_`|~)".into())
    }
}

/// A header value of visible ASCII (and inner spaces).
fn header_value(v: &str) -> Result<String, String> {
    if !v.is_empty() && v.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        Ok(v.to_string())
    } else {
        Err("expected visible ASCII".into())
    }
}

/// `$remote_addr`, `$http_<name>` or `$cookie_<name>`.
fn hash_by(v: &str) -> Result<HashBy, String> {
    let why = || "expected $remote_addr, $http_<name> or $cookie_<name>".to_string();
    if v == "$remote_addr" {
        return Ok(HashBy::RemoteAddr);
    }
    if let Some(name) = v.strip_prefix("$http_") {
        let name = token(name).map_err(|_| why())?;
        // nginx names headers with '_' for '-'.
        return Ok(HashBy::Header(name.replace('_', "-")));
    }
    if let Some(name) = v.strip_prefix("$cookie_") {
        return token(name).map(HashBy::Cookie).map_err(|_| why());
    }
    Err(why())
}

/// Whole seconds (nginx's `60`, or `60s`), 1 s to 1 h.
fn seconds(v: &str) -> Result<Duration, String> {
    let digits = v.strip_suffix('s').unwrap_or(v);
    let n = number(digits, 1, MAX_TIMEOUT.as_secs() as u32)
        .map_err(|_| format!("expected whole seconds in 1..={}", MAX_TIMEOUT.as_secs()))?;
    Ok(Duration::from_secs(u64::from(n)))
}

/// nginx sizes: `0` (unlimited: `u64::MAX`), or digits with an optional k, m or g (any case).
fn size(v: &str) -> Result<u64, String> {
    let why = || "expected a size like 0, 512k, 8m or 1g (at most 64g)".to_string();
    let (digits, unit) = match v.as_bytes().last() {
        Some(b'k' | b'K') => (&v[..v.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&v[..v.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(why());
    }
    let n: u64 = digits.parse().map_err(|_| why())?;
    if n == 0 {
        return Ok(u64::MAX);
    }
    match n.checked_mul(unit) {
        Some(b) if b <= MAX_BODY => Ok(b),
        _ => Err(why()),
    }
}

/// The `lb.example.com/` annotations of a LoadBalancer Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAnnotations {
    /// `mode`: the pods' forwarding mode (default fullnat).
    pub mode: Option<crate::config::Mode>,
    /// `vm-mode`: the VMs' mode (default: the pods').
    pub vm_mode: Option<crate::config::Mode>,
    /// `weight`: every backend's weight (1..=100, default 1).
    pub weight: Option<u32>,
    /// `affinity: client-ip`.
    pub client_ip_affinity: bool,
}

/// Parses our annotations of a Service.
pub fn parse_service(
    annotations: Option<&BTreeMap<String, String>>,
) -> (ServiceAnnotations, Vec<AnnotationProblem>) {
    let mut out = ServiceAnnotations::default();
    let mut problems = Vec::new();
    for (name, value) in annotations.into_iter().flatten() {
        let Some(key) = name.strip_prefix(OURS) else {
            continue;
        };
        let v = value.trim();
        let result = match key {
            "mode" => mode(v).map(|m| out.mode = Some(m)),
            "vm-mode" => mode(v).map(|m| out.vm_mode = Some(m)),
            "weight" => number(v, 1, 100).map(|n| out.weight = Some(n)),
            "affinity" => match v {
                "client-ip" => {
                    out.client_ip_affinity = true;
                    Ok(())
                }
                "none" => Ok(()),
                _ => Err("expected \"client-ip\" or \"none\"".into()),
            },
            _ => Err("not one of mode, vm-mode, weight, affinity".into()),
        };
        if let Err(why) = result {
            problems.push(AnnotationProblem {
                reason: "InvalidAnnotation",
                message: format!(
                    "annotation {} value {}: {why}; ignored",
                    quote(name),
                    quote(value)
                ),
            });
        }
    }
    (out, problems)
}

/// `fullnat`, `nat`, `dsr-ipip`, `dsr-gue` or `dr`.
fn mode(v: &str) -> Result<crate::config::Mode, String> {
    use crate::config::Mode;
    match v {
        "fullnat" => Ok(Mode::FullNat),
        "nat" => Ok(Mode::Nat),
        "dsr-ipip" => Ok(Mode::DsrIpip),
        "dsr-gue" => Ok(Mode::DsrGue),
        "dr" => Ok(Mode::Dr),
        _ => Err("expected fullnat, nat, dsr-ipip, dsr-gue or dr".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> (IngressAnnotations, Vec<AnnotationProblem>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{NGINX}{k}"), v.to_string()))
            .collect();
        parse_ingress(Some(&map))
    }

    #[test]
    fn typed_values() {
        let (a, p) = parse(&[
            ("canary", "true"),
            ("canary-weight", "20"),
            ("canary-by-header", "X-Canary"),
            ("affinity", "cookie"),
            ("upstream-hash-by", "$http_x_user"),
            ("backend-protocol", "https"),
            ("proxy-connect-timeout", "5"),
            ("proxy-read-timeout", "60s"),
            ("proxy-body-size", "8m"),
            ("ssl-redirect", "false"),
        ]);
        assert!(p.is_empty(), "{p:?}");
        assert!(a.canary.enabled);
        assert_eq!(a.canary.weight, Some(20));
        assert_eq!(a.canary.weight_total, 100);
        assert_eq!(a.canary.by_header.as_deref(), Some("X-Canary"));
        assert_eq!(a.affinity_cookie.as_deref(), Some("INGRESSCOOKIE"));
        assert_eq!(a.hash_by, Some(HashBy::Header("x-user".into())));
        assert_eq!(a.backend_protocol, Some(BackendProtocol::Https));
        assert_eq!(a.proxy_connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(a.proxy_read_timeout, Some(Duration::from_secs(60)));
        assert_eq!(a.proxy_body_size, Some(8 << 20));
        assert_eq!(a.ssl_redirect, Some(false));
    }

    #[test]
    fn bad_values_are_ignored_and_reported() {
        let (a, p) = parse(&[
            ("canary-weight", "20; drop"),
            ("upstream-hash-by", "$request_uri"),
            ("proxy-body-size", "99999999999999g"),
            ("session-cookie-name", "a b"),
            ("proxy-read-timeout", "-1"),
            ("configuration-snippet", "return 200;"),
            ("server-snippet", "x"),
            ("auth-url", "http://x"),
        ]);
        assert_eq!(a.canary.weight, None);
        assert_eq!(a.hash_by, None);
        assert_eq!(a.proxy_body_size, None);
        assert_eq!(a.proxy_read_timeout, None);
        let reasons: Vec<&str> = p.iter().map(|p| p.reason).collect();
        // In name order: auth-url, canary-weight, configuration-snippet, proxy-body-size,
        // proxy-read-timeout, server-snippet, session-cookie-name, upstream-hash-by.
        assert_eq!(
            reasons,
            [
                "UnsupportedAnnotation",
                "InvalidAnnotation",
                "SnippetRefused",
                "InvalidAnnotation",
                "InvalidAnnotation",
                "SnippetRefused",
                "InvalidAnnotation",
                "InvalidAnnotation",
            ]
        );
    }

    #[test]
    fn size_limit_and_quotes_are_bounded() {
        let mut map = BTreeMap::new();
        map.insert("a".to_string(), "x".repeat(MAX_ANNOTATION_BYTES));
        assert!(check_size(Some(&map)).is_err());
        map.insert("a".to_string(), "x".repeat(100));
        assert!(check_size(Some(&map)).is_ok());
        assert!(quote(&"y".repeat(10_000)).len() < 100);
        assert!(quote(&"é".repeat(100)).len() < 200);
    }

    #[test]
    fn service_annotations() {
        let map: BTreeMap<String, String> = [
            ("lb.example.com/mode", "dsr-gue"),
            ("lb.example.com/weight", "7"),
            ("lb.example.com/affinity", "client-ip"),
            ("lb.example.com/vm-mode", "tunnel"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (a, p) = parse_service(Some(&map));
        assert_eq!(a.mode, Some(crate::config::Mode::DsrGue));
        assert_eq!(a.weight, Some(7));
        assert!(a.client_ip_affinity);
        assert_eq!(a.vm_mode, None);
        assert_eq!(p.len(), 1);
    }
}
