//! Property tests: the matcher against a regex reference, and the shape rules.

use proptest::prelude::*;
use wasmspawner_argpattern::{glob, matches};

/// The reference: `*` is `.*`, everything else literal, whole string.
fn reference(pattern: &str, value: &str) -> bool {
    let re: String = pattern
        .split('*')
        .map(regex::escape)
        .collect::<Vec<_>>()
        .join(".*");
    regex::Regex::new(&format!("^(?s:{re})$"))
        .unwrap()
        .is_match(value)
}

proptest! {
    #[test]
    fn glob_agrees_with_the_regex_reference(p in "[ab*]{0,8}", v in "[ab]{0,10}") {
        prop_assert_eq!(glob(&p, &v), reference(&p, &v));
    }

    #[test]
    fn glob_handles_any_unicode(p in "\\PC{0,6}", v in "\\PC{0,12}") {
        prop_assert_eq!(glob(&p, &v), reference(&p, &v));
    }

    #[test]
    fn double_star_matches_any_rest(prefix in prop::collection::vec("[a-z-]{1,5}", 0..4), rest in prop::collection::vec("\\PC{0,8}", 0..6)) {
        let mut pats: Vec<String> = prefix.clone();
        pats.push("**".into());
        let mut args = prefix.clone();
        args.extend(rest);
        prop_assert!(matches(&pats, &args));
    }

    #[test]
    fn single_stars_fix_the_argument_count(n in 0usize..6, args in prop::collection::vec("\\PC{0,8}", 0..8)) {
        let pats = vec!["*".to_string(); n];
        prop_assert_eq!(matches(&pats, &args), args.len() == n);
    }

    #[test]
    fn literals_match_only_themselves(lit in "[a-z=-]{1,8}", arg in "\\PC{0,8}") {
        prop_assert_eq!(matches(std::slice::from_ref(&lit), std::slice::from_ref(&arg)), lit == arg);
    }

    #[test]
    fn an_argument_never_spans_two_patterns(a in "[a-z]{1,4}", b in "[a-z]{1,4}") {
        // ["--x=*"] must not accept ["--x=a", "b"]: extra arguments are refused.
        let pats = vec!["--x=*".to_string()];
        let joined = format!("--x={a}");
        prop_assert!(matches(&pats, std::slice::from_ref(&joined)));
        prop_assert!(!matches(&pats, &[joined, b]));
    }
}
