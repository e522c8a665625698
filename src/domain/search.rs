//! A search as users type it: free text, parsed into the words every match must contain.
//!
//! Parsing is the same for every store backend and leaves no operator syntax: each backend turns
//! the words into its own query language (the embedded store quotes them for FTS5).

use crate::error::{Error, Result};

/// A parsed search: 1 to [`SearchQuery::MAX_WORDS`] lower-case words of letters and digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    words: Vec<String>,
}

impl SearchQuery {
    /// Most words a search looks for; words past it are ignored.
    pub const MAX_WORDS: usize = 16;

    /// Splits `text` at every character that is not a letter or a digit. Text with no word in
    /// it (only punctuation, say) is invalid.
    pub fn parse(text: &str) -> Result<SearchQuery> {
        let words: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(Self::MAX_WORDS)
            .map(|w| w.to_lowercase())
            .collect();
        if words.is_empty() {
            return Err(Error::invalid("q", "must contain at least one word"));
        }
        Ok(SearchQuery { words })
    }

    /// The words, in the order given; a match contains every one of them.
    pub fn words(&self) -> &[String] {
        &self.words
    }
}

#[cfg(test)]
mod tests {
    use super::SearchQuery;

    #[test]
    fn words_are_split_at_anything_but_letters_and_digits() {
        let query = SearchQuery::parse("Rust, \"AND\" ünïcode-42 OR(x)*").expect("words");
        assert_eq!(query.words(), ["rust", "and", "ünïcode", "42", "or", "x"]);
    }

    #[test]
    fn text_without_words_is_invalid() {
        assert!(SearchQuery::parse("").is_err());
        assert!(SearchQuery::parse(" -*\"() ").is_err());
    }

    #[test]
    fn words_past_the_limit_are_ignored() {
        let text = (0..40)
            .map(|n| format!("w{n}"))
            .collect::<Vec<_>>()
            .join(" ");
        let query = SearchQuery::parse(&text).expect("words");
        assert_eq!(query.words().len(), SearchQuery::MAX_WORDS);
        assert_eq!(query.words()[0], "w0");
    }
}
