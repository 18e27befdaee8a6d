//! Interface names as Linux accepts them, checked before any port or lab step uses one.

use std::io;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Checks `name` is a valid Linux interface name (1..=15 bytes, no `/`, whitespace or NUL).
pub fn check_ifname(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|c| c == b'/' || c == b':' || c == 0 || c.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}: 1 to {IFNAME_MAX} bytes, no '/', ':' or spaces"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(check_ifname("veth0").is_ok());
        assert!(check_ifname("abcdefghijklmno").is_ok());
        for bad in ["", "abcdefghijklmnop", "a/b", "a b", "..", "a:1"] {
            let e = check_ifname(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(e.to_string().contains(&format!("{bad:?}")));
        }
    }
}
