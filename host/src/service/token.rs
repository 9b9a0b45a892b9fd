//! Per-spawn callback tokens and the callback's host rule (agreement with
//! the scheduler; the execution-host rule itself is [`crate::exec_host`]).

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
/// (case-insensitive) or address, or allowed by the instance's
/// `callback_hosts` rules (an exact name, a suffix starting with `.`, an
/// address or a CIDR network; see [`crate::exec_host::Rule`]). Before the
/// scheduler has said where the job runs, only those rules allow a host.
/// The host must
/// pass the execution-host rule besides ([`crate::exec_host::Policy`]).
pub fn host_allowed(given: &str, exec_host: Option<&str>, rules: &[String]) -> bool {
    use crate::exec_host::{target, Rule};
    let t = target(given);
    let by_rule = t.as_ref().is_some_and(|t| {
        rules
            .iter()
            .filter_map(|r| Rule::parse(r).ok())
            .any(|r| r.matches(t))
    });
    match exec_host {
        Some(exec) => {
            given.eq_ignore_ascii_case(exec) || (t.is_some() && t == target(exec)) || by_rule
        }
        // Not known yet: only the operator's rule can vouch for a host,
        // never the caller's word.
        None => by_rule,
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
        assert!(!host_allowed("anything", None, &[]));
        assert!(host_allowed("node1.cluster.example.org", None, &rules));
        assert!(!host_allowed("anything", None, &rules));
        // Addresses compare as addresses; networks are rules too.
        assert!(host_allowed("::ffff:10.0.0.7", Some("10.0.0.7"), &[]));
        let nets = vec!["10.1.0.0/16".to_string()];
        assert!(host_allowed("10.1.3.4", Some("node2"), &nets));
        assert!(!host_allowed("10.2.3.4", Some("node2"), &nets));
    }
}
