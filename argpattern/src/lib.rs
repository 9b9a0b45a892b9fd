//! Argument patterns, as used in plugin declarations and operator grants.
//!
//! A pattern is a list of tokens, one per argument position:
//!
//! | token | matches |
//! |---|---|
//! | `*` | exactly one argument, any value |
//! | `**` | any number of further arguments (only as the last token) |
//! | `a*b` | one argument matching the glob (`*` = any run of characters) |
//! | anything else | one argument equal to the token |
//!
//! A token that should match a literal `*` cannot be written; no scheduler
//! command needs one. Matching is on whole argv elements: no shell is ever
//! involved, so a value like `; rm -rf /` is just one (unusual) argument.

/// Why a pattern list is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatternError {}

/// Checks a pattern list: `**` only last, no `**` inside a token.
pub fn validate<S: AsRef<str>>(patterns: &[S]) -> Result<(), PatternError> {
    for (i, p) in patterns.iter().enumerate() {
        let p = p.as_ref();
        if p == "**" && i + 1 != patterns.len() {
            return Err(PatternError(format!(
                "`**` must be the last argument pattern (it is number {} of {})",
                i + 1,
                patterns.len()
            )));
        }
        if p != "**" && p.contains("**") {
            return Err(PatternError(format!(
                "`{p}`: `**` stands alone (use `*` for a glob inside one argument)"
            )));
        }
    }
    Ok(())
}

/// Does `args` match `patterns`? See the module docs.
pub fn matches<P: AsRef<str>, A: AsRef<str>>(patterns: &[P], args: &[A]) -> bool {
    let mut i = 0;
    for (pi, p) in patterns.iter().enumerate() {
        let p = p.as_ref();
        if p == "**" && pi + 1 == patterns.len() {
            return true;
        }
        let Some(a) = args.get(i) else { return false };
        if !(p == "*" || glob(p, a.as_ref())) {
            return false;
        }
        i += 1;
    }
    i == args.len()
}

/// `*` in `pattern` matches any run of characters (including none); every
/// other character is literal.
pub fn glob(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if value.len() < first.len() + last.len() || !value.starts_with(first) || !value.ends_with(last)
    {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(at) => rest = &rest[at + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_rest() {
        assert!(matches(&["-h", "**"], &["-h"]));
        assert!(matches(&["-h", "**"], &["-h", "a", "b"]));
        assert!(!matches(&["-h", "*"], &["-h"]));
        assert!(matches(&["-h", "*"], &["-h", "x y; rm -rf /"]));
        assert!(!matches(&["a"], &["a", "b"]));
        assert!(matches::<&str, &str>(&[], &[]));
        assert!(!matches::<&str, &str>(&[], &["a"]));
        assert!(matches(&["**"], &[] as &[&str]));
    }

    #[test]
    fn globs_inside_one_argument() {
        assert!(matches(&["--time=*"], &["--time=01:00:00"]));
        assert!(!matches(&["--time=*"], &["--mem=1"]));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(glob("a*b*c", "abc"));
        assert!(!glob("a*b*c", "aXcYb"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("*", ""));
        assert!(glob("é*é", "éxé"));
    }

    #[test]
    fn validation() {
        assert!(validate(&["a", "**"]).is_ok());
        assert!(validate(&["**", "a"]).is_err());
        assert!(validate(&["a**"]).is_err());
    }
}
