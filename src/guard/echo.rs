//! Untrusted text in our messages: short, one line, nothing a terminal obeys.

use crate::printer::sanitize;

/// At most `max` characters of `text`, control and bidi characters escaped,
/// with how much was left out (a misparsed 800 KB key must not become an
/// 800 KB error line).
pub fn bounded(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return sanitize(text);
    }
    let head: String = text.chars().take(max).collect();
    format!("{}… ({} more characters)", sanitize(&head), count - max)
}

#[cfg(test)]
mod tests {
    use super::bounded;

    #[test]
    fn truncates_and_escapes() {
        assert_eq!(bounded("abc", 5), "abc");
        assert_eq!(bounded("abcdef", 3), "abc… (3 more characters)");
        assert_eq!(bounded("a\nb", 5), "a\\u{a}b");
    }
}
