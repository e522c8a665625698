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
        let words: Vec<String> = words_of(text).take(Self::MAX_WORDS).collect();
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

/// The words of `text`, lower-case, in order: the one tokenizer of searches, for the query and,
/// in backends that index words themselves (MongoDB), for the text searched.
pub fn words_of(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// A word as an index of words stores it: without diacritics (`ünïcode` → `unicode`), as the
/// embedded store's search index (FTS5, `remove_diacritics`) stores and looks words up. A backend
/// that indexes words itself folds both the text's words and the query's.
pub fn fold(word: &str) -> String {
    use unicode_normalization::char::is_combining_mark;
    use unicode_normalization::UnicodeNormalization;
    if word.is_ascii() {
        return word.to_string();
    }
    word.nfd()
        .filter(|c| !is_combining_mark(*c))
        .nfc()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{fold, words_of, SearchQuery};

    #[test]
    fn indexed_words_are_the_query_words_folded() {
        let text = "Crème brûlée, ÜNÏCODE-42";
        let words: Vec<String> = words_of(text).map(|w| fold(&w)).collect();
        assert_eq!(words, ["creme", "brulee", "unicode", "42"]);
        let query = SearchQuery::parse(text).expect("words");
        let folded: Vec<String> = query.words().iter().map(|w| fold(w)).collect();
        assert_eq!(folded, words);
    }

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
