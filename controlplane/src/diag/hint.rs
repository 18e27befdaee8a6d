//! Hints for serde's schema errors: a close match for a typo, what a missing key needs.

/// A hint for a serde error message: a close match for an unknown key or variant, or what a missing
/// key needs.
pub fn schema_hint(message: &str) -> Option<String> {
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if message.starts_with("unknown field") || message.starts_with("unknown variant") {
        let (got, choices) = quoted.split_first()?;
        let what = if message.starts_with("unknown field") {
            "key"
        } else {
            "value"
        };
        return Some(match closest(got, choices) {
            Some(c) => format!("did you mean `{c}`?"),
            None if what == "key" => {
                "this table has no such key; docs/CONFIG.md lists every key".to_string()
            }
            None => format!("the {what} must be one of the listed names"),
        });
    }
    if message.starts_with("invalid IP address syntax") {
        return Some("an IPv4 or IPv6 address, like \"198.18.0.1\" or \"2001:db8::1\"".into());
    }
    if message.starts_with("invalid type: string") && integer_expected(message) {
        return Some("write numbers without quotes".into());
    }
    if message.starts_with("missing field") {
        let field = quoted.first()?;
        return Some(format!(
            "`{field}` has no default: add it to this table (docs/CONFIG.md)"
        ));
    }
    None
}

/// True when serde's "expected ..." part names an integer type.
fn integer_expected(message: &str) -> bool {
    message.rsplit_once("expected ").is_some_and(|(_, t)| {
        matches!(
            t.trim(),
            "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize"
        )
    })
}

/// The choice nearest to `got` by edit distance, when it is close enough to be a typo. A swap of
/// two neighbours counts as one edit (optimal string alignment), so `prot` is one edit from `port`.
fn closest<'a>(got: &str, choices: &[&'a str]) -> Option<&'a str> {
    let limit = (got.chars().count() / 3).max(1);
    choices
        .iter()
        .map(|c| (strsim::osa_distance(got, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_a_did_you_mean() {
        assert_eq!(
            schema_hint("unknown field `mttu`, expected one of `mac`, `mtu`, `workers`"),
            Some("did you mean `mtu`?".into())
        );
        assert_eq!(
            schema_hint("unknown variant `dsr`, expected one of `fullnat`, `dsr-gue`, `dr`"),
            Some("did you mean `dr`?".into())
        );
        let h = schema_hint("unknown field `zzzzzz`, expected one of `mac`, `mtu`").unwrap();
        assert!(h.contains("no such key"), "{h}");
        let h = schema_hint("missing field `vip`").unwrap();
        assert!(h.contains("`vip` has no default"), "{h}");
        assert_eq!(
            schema_hint("invalid type: integer `5`, expected a string"),
            None
        );
        assert_eq!(
            schema_hint("unknown variant `tpc`, expected `tcp` or `udp`"),
            Some("did you mean `tcp`?".into())
        );
        assert_eq!(
            schema_hint("unknown field `prot`, expected `port` or `proto`"),
            Some("did you mean `port`?".into())
        );
    }
}
