//! The peers' test corpora in `shared/testdata`, beside the checkout (never copied into the
//! project; `shared/testdata/README.md` describes them).

use std::path::PathBuf;

/// The path of `rel` under `shared/testdata`.
pub fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata")
        .join(rel)
}

/// The JSON array in `shared/testdata/<rel>` (the HTTP vectors, the routing cases). Panics with
/// the path when the file is missing or not an array: a test cannot run without its data.
pub fn json_array(rel: &str) -> Vec<serde_json::Value> {
    let path = path(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Array(items)) => items,
        Ok(_) => panic!("{}: not a JSON array", path.display()),
        Err(e) => panic!("{}: {e}", path.display()),
    }
}
