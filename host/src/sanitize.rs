//! The one sanitiser for text that comes from a plugin (or from a program a
//! plugin ran) before it reaches the host's log, the store, the API or HTML.
//!
//! It replaces every character that can forge a line or reorder what a
//! reader sees — C0 and C1 controls (newline, carriage return, ESC …), DEL,
//! the Unicode line and paragraph separators, and the bidirectional
//! overrides, embeddings, isolates and marks — with a space, and cuts the
//! result to a byte budget at a character boundary, ending it with `…`.

/// Longest reason, error or message the host keeps from a plugin.
pub const MAX_REASON: usize = 1024;

/// Whether `c` may pass into a log line, the store or the API as it is.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' // line separator
                | '\u{2029}' // paragraph separator
                | '\u{202A}'..='\u{202E}' // LRE, RLE, PDF, LRO, RLO
                | '\u{2066}'..='\u{2069}' // LRI, RLI, FSI, PDI
                | '\u{200E}' | '\u{200F}' | '\u{061C}' // LRM, RLM, ALM
                | '\u{FEFF}' // zero-width no-break space (BOM)
        )
}

/// Whether `s` has no character [`text`] would replace.
pub fn is_clean(s: &str) -> bool {
    !s.chars().any(is_unsafe)
}

/// `s` with unsafe characters replaced by spaces, at most `max` bytes (plus
/// the `…` that marks a cut).
pub fn text(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 3);
    for c in s.chars() {
        if out.len().saturating_add(c.len_utf8()) > max {
            out.push('…');
            return out;
        }
        out.push(if is_unsafe(c) { ' ' } else { c });
    }
    out
}

/// [`text`] without a budget (for texts whose size is checked elsewhere).
pub fn clean(s: &str) -> String {
    if is_clean(s) {
        s.to_string()
    } else {
        text(s, usize::MAX)
    }
}

/// [`text`] with the default budget for reasons and errors.
pub fn reason(s: &str) -> String {
    text(s, MAX_REASON)
}

/// Cuts `s` in place to at most `max` bytes at a character boundary.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut i = max;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        s.truncate(i);
        s.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_lines_and_bidi_become_spaces() {
        let s = "ok\n2026-01-01 ERROR forged\r\u{1b}[31m\u{202e}txt.exe\u{2028}x\u{85}y";
        let t = text(s, 1000);
        assert!(is_clean(&t), "{t:?}");
        assert!(!t.contains('\n') && !t.contains('\u{202e}') && !t.contains('\u{1b}'));
        assert!(t.starts_with("ok 2026-01-01 ERROR forged"));
    }

    #[test]
    fn cut_at_a_char_boundary_with_a_mark() {
        let t = text(&"é".repeat(100), 11);
        assert_eq!(t, format!("{}…", "é".repeat(5)));
        let mut s = "aé".repeat(10);
        truncate(&mut s, 4);
        assert_eq!(s, "aéa…");
        assert_eq!(text("short", 100), "short");
    }
}
