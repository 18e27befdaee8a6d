//! `[kubernetes]`: names the API server would refuse (namespaces, label selector, controller and
//! class names, the Lease), listener addresses, the VIP pool, the batch window and the leader
//! election's timing.

use std::time::Duration;

use super::super::kubernetes::Kubernetes;
use crate::diag::Problem;

/// Longest batch window: changes wait at most this before they are applied.
const MAX_BATCH: Duration = Duration::from_secs(1);

/// Every rule of `[kubernetes]`.
pub(super) fn check(k: &Kubernetes, out: &mut Vec<Problem>) {
    let mut push = |key: String, message: String, hint: &str| {
        out.push(
            Problem::new(
                format!("kubernetes.{key}"),
                format!("kubernetes: {message}"),
            )
            .hint(hint),
        );
    };
    for (i, ns) in k.namespaces.iter().enumerate() {
        if let Err(why) = dns_label(ns) {
            push(
                format!("namespaces[{i}]"),
                format!("namespace {ns:?} {why}"),
                "a namespace is a DNS label: lowercase letters, digits and '-', at most 63",
            );
        } else if k.namespaces[..i].contains(ns) {
            push(
                format!("namespaces[{i}]"),
                format!("namespace {ns:?} is listed twice"),
                "list each namespace once",
            );
        }
    }
    if let Err(why) = label_selector(&k.label_selector) {
        push(
            "label_selector".into(),
            format!("label_selector {:?}: {why}", k.label_selector),
            "requirements separated by commas: \"app=web\", \"tier!=cache\", \"env in (a,b)\", \"canary\", \"!legacy\"",
        );
    }
    for (key, value) in [
        ("ingress_controller", &k.ingress_controller),
        ("gateway_controller", &k.gateway_controller),
        ("load_balancer_class", &k.load_balancer_class),
    ] {
        if let Err(why) = domain_prefixed(value) {
            push(
                key.into(),
                format!("{key} {value:?} {why}"),
                "a domain-prefixed path, e.g. \"lb.example.com/ingress-controller\"",
            );
        }
    }
    for (key, list) in [
        ("ingress_http", &k.ingress_http),
        ("ingress_https", &k.ingress_https),
    ] {
        for (i, sa) in list.iter().enumerate() {
            if sa.port() == 0 {
                push(
                    format!("{key}[{i}]"),
                    format!("{key} {sa} has port 0"),
                    "give the port clients connect to, e.g. \"198.18.0.10:80\"",
                );
            }
        }
    }
    for (i, sa) in k.ingress_https.iter().enumerate() {
        if k.ingress_http.contains(sa) {
            push(
                format!("ingress_https[{i}]"),
                format!("{sa} is in both ingress_http and ingress_https"),
                "plain HTTP and HTTPS need their own ports, e.g. 80 and 443",
            );
        }
    }
    for (i, a) in k.gateway_addresses.iter().enumerate() {
        if a.is_unspecified() || a.is_multicast() {
            push(
                format!("gateway_addresses[{i}]"),
                format!("gateway address {a} is not a unicast address"),
                "use a unicast address",
            );
        } else if k.gateway_addresses[..i].contains(a) {
            push(
                format!("gateway_addresses[{i}]"),
                format!("gateway address {a} is listed twice"),
                "list each address once",
            );
        }
    }
    for (i, p) in k.vip_pool.iter().enumerate() {
        if let Some(j) = (0..i).find(|&j| {
            let q = &k.vip_pool[j];
            q.0.contains(&p.0.network()) || p.0.contains(&q.0.network())
        }) {
            push(
                format!("vip_pool[{i}]"),
                format!(
                    "vip_pool prefix {} overlaps vip_pool[{j}] {}",
                    p.0, k.vip_pool[j].0
                ),
                "a VIP must come from one prefix only: remove or narrow one of them",
            );
        }
    }
    if k.batch > MAX_BATCH {
        push(
            "batch".into(),
            format!("batch {:?} is above 1s", k.batch),
            "a few milliseconds gathers a rollout's changes into one table, e.g. \"5ms\"",
        );
    }
    let le = &k.leader_election;
    if let Err(why) = dns_subdomain(&le.name) {
        push(
            "leader_election.name".into(),
            format!("leader_election name {:?} {why}", le.name),
            "a Lease name is a DNS subdomain, e.g. \"lb-leader\"",
        );
    }
    if let Some(ns) = &le.namespace {
        if let Err(why) = dns_label(ns) {
            push(
                "leader_election.namespace".into(),
                format!("leader_election namespace {ns:?} {why}"),
                "a namespace is a DNS label, e.g. \"lb-system\"",
            );
        }
    }
    let timing =
        "lease_duration > renew_deadline > retry_period > 0, e.g. \"15s\", \"10s\", \"2s\"";
    if le.retry_period.is_zero() {
        push(
            "leader_election.retry_period".into(),
            "leader_election retry_period must be above 0".into(),
            timing,
        );
    } else if le.renew_deadline <= le.retry_period {
        push(
            "leader_election.renew_deadline".into(),
            format!(
                "leader_election renew_deadline {:?} is not above retry_period {:?}: a leader could not retry a renewal before losing the lease",
                le.renew_deadline, le.retry_period
            ),
            timing,
        );
    }
    if le.lease_duration <= le.renew_deadline {
        push(
            "leader_election.lease_duration".into(),
            format!(
                "leader_election lease_duration {:?} is not above renew_deadline {:?}: two replicas could lead at once",
                le.lease_duration, le.renew_deadline
            ),
            timing,
        );
    }
}

/// RFC 1123 label: 1-63 of `[a-z0-9-]`, starting and ending alphanumeric.
fn dns_label(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    if s.len() > 63 {
        return Err("is longer than 63 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("has characters other than lowercase letters, digits and '-'");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("starts or ends with '-'");
    }
    Ok(())
}

/// RFC 1123 subdomain: labels joined by '.', at most 253.
fn dns_subdomain(s: &str) -> Result<(), &'static str> {
    if s.len() > 253 {
        return Err("is longer than 253 characters");
    }
    s.split('.').try_for_each(dns_label)
}

/// `domain/path`: a DNS subdomain, '/', then a non-empty path of printable characters.
fn domain_prefixed(s: &str) -> Result<(), &'static str> {
    let Some((domain, path)) = s.split_once('/') else {
        return Err("has no domain prefix (\"domain/name\")");
    };
    dns_subdomain(domain).map_err(|_| "has a domain that is not a DNS name")?;
    if path.is_empty() || s.len() > 253 {
        return Err("has an empty path or is longer than 253 characters");
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("has spaces or non-ASCII characters in its path");
    }
    Ok(())
}

/// A label key: an optional DNS-subdomain prefix and '/', then a name of 1-63 alphanumerics,
/// '-', '_', '.', starting and ending alphanumeric.
fn label_key(s: &str) -> bool {
    let name = match s.rsplit_once('/') {
        Some((prefix, name)) => {
            if dns_subdomain(prefix).is_err() {
                return false;
            }
            name
        }
        None => s,
    };
    !name.is_empty() && label_value(name)
}

/// A label value: at most 63 alphanumerics, '-', '_', '.', starting and ending alphanumeric
/// (empty is allowed).
fn label_value(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

/// The API server's label-selector syntax: requirements separated by commas, each `key`, `!key`,
/// `key=value`, `key==value`, `key!=value`, `key in (v,...)` or `key notin (v,...)`.
fn label_selector(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Ok(());
    }
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err("unbalanced parentheses".into());
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    parts.push(&s[start..]);
    for part in parts {
        let r = part.trim();
        let bad = || Err(format!("{r:?} is not a requirement"));
        if let Some(key) = r.strip_prefix('!') {
            if !label_key(key.trim()) {
                return bad();
            }
            continue;
        }
        if let Some((key, value)) = r
            .split_once("!=")
            .or_else(|| r.split_once("=="))
            .or_else(|| r.split_once('='))
        {
            if !label_key(key.trim()) || !label_value(value.trim()) {
                return bad();
            }
            continue;
        }
        let words: Vec<&str> = r.splitn(2, char::is_whitespace).collect();
        match words.as_slice() {
            [key] if label_key(key) => {}
            [key, rest] => {
                let rest = rest.trim();
                let set = rest
                    .strip_prefix("notin")
                    .or_else(|| rest.strip_prefix("in"))
                    .map(str::trim)
                    .and_then(|s| s.strip_prefix('('))
                    .and_then(|s| s.strip_suffix(')'));
                let Some(set) = set else {
                    return bad();
                };
                if !label_key(key) || !set.split(',').all(|v| label_value(v.trim())) {
                    return bad();
                }
            }
            _ => return bad(),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_the_api_server_takes_pass_and_others_do_not() {
        for ok in [
            "",
            "app=web",
            "app==web,tier!=cache",
            "canary",
            "!legacy",
            "env in (prod, staging),example.com/team notin (a)",
        ] {
            assert_eq!(label_selector(ok), Ok(()), "{ok}");
        }
        // An empty value is allowed by the API server.
        assert_eq!(label_selector("app="), Ok(()));
        for bad in [
            "=web",
            "app=we b",
            "env in prod",
            "env in (a",
            "a,,b",
            "app=web)",
        ] {
            assert!(label_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_follow_dns_rules() {
        assert!(dns_label("kube-system").is_ok());
        assert!(dns_label("Kube").is_err());
        assert!(dns_label("-a").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
        assert!(domain_prefixed("lb.example.com/ingress-controller").is_ok());
        assert!(domain_prefixed("ingress-controller").is_err());
        assert!(domain_prefixed("lb.example.com/").is_err());
    }
}
