//! Per-spawn callback tokens and the callback's host rule.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A fresh token (256 random bits, hex) and its stored hash.
pub fn new_token() -> (String, String) {
    let t: [u8; 32] = rand::random();
    let token = hex::encode(t);
    let hash = hash(&token);
    (token, hash)
}

/// sha256 of the token, hex.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `presented` is the token whose hash is `stored` (constant time).
pub fn matches(stored: &str, presented: &str) -> bool {
    hash(presented).as_bytes().ct_eq(stored.as_bytes()).into()
}

/// The callback's host against what the scheduler reported: the same name
/// (case-insensitive), or allowed by the instance's `callback_hosts` rules
/// (an exact name, or a suffix starting with `.`).
pub fn host_allowed(given: &str, exec_host: Option<&str>, rules: &[String]) -> bool {
    let given = given.to_ascii_lowercase();
    let by_rule = rules.iter().any(|r| {
        let r = r.to_ascii_lowercase();
        if r.starts_with('.') {
            given.ends_with(&r) && given.len() > r.len()
        } else {
            given == r
        }
    });
    match exec_host {
        Some(exec) => given == exec.to_ascii_lowercase() || by_rule,
        None => rules.is_empty() || by_rule,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hash_and_match() {
        let (t, h) = new_token();
        assert_eq!(t.len(), 64);
        assert!(matches(&h, &t));
        assert!(!matches(&h, "x"));
        assert_ne!(new_token().0, t);
    }

    #[test]
    fn host_rule() {
        let rules = vec![".cluster.example.org".to_string(), "login1".to_string()];
        assert!(host_allowed("NODE1", Some("node1"), &[]));
        assert!(!host_allowed("node2", Some("node1"), &[]));
        assert!(host_allowed(
            "node2.cluster.example.org",
            Some("node2"),
            &rules
        ));
        assert!(!host_allowed("cluster.example.org", Some("node2"), &rules));
        assert!(host_allowed("login1", Some("node2"), &rules));
        assert!(!host_allowed("evil.org", Some("node2"), &rules));
        assert!(host_allowed("anything", None, &[]));
        assert!(!host_allowed("anything", None, &rules));
    }
}
