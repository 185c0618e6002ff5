//! Stop strings: finding them in the completion, and holding back text that might be the
//! start of one so a stream never shows part of a stop string.

/// Where a stop string matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopMatch {
    /// Byte offset in the completion where the stop string starts; text from here is dropped.
    pub at: usize,
    /// The stop string that matched.
    pub stop: String,
}

/// The stop strings of one request.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
}

impl StopStrings {
    /// Stop strings; empty strings are ignored.
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        StopStrings { stops: stops.into_iter().filter(|s| !s.is_empty()).collect() }
    }

    /// The earliest stop string in `text`, looking only at matches that end after
    /// `searched_up_to` (text before that was already checked).
    pub fn find(&self, text: &str, searched_up_to: usize) -> Option<StopMatch> {
        self.stops
            .iter()
            .filter_map(|stop| {
                let from = floor_char_boundary(text, searched_up_to.saturating_sub(stop.len() - 1));
                text[from..].find(stop.as_str()).map(|i| StopMatch { at: from + i, stop: stop.clone() })
            })
            .min_by_key(|m| m.at)
    }

    /// How many bytes of `text` can be shown: all of it except a tail that is a proper prefix
    /// of some stop string.
    pub fn safe_len(&self, text: &str) -> usize {
        let mut safe = text.len();
        for stop in &self.stops {
            for (cut, _) in stop.char_indices().skip(1) {
                if text.ends_with(&stop[..cut]) {
                    safe = safe.min(text.len() - cut);
                }
            }
        }
        safe
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_earliest_stop() {
        let s = StopStrings::new(["END".to_string(), "\n\n".to_string()]);
        assert_eq!(s.find("abc\n\nxEND", 0), Some(StopMatch { at: 3, stop: "\n\n".into() }));
        assert_eq!(s.find("no stop here", 0), None);
    }

    #[test]
    fn finds_stop_spanning_previous_search_boundary() {
        let s = StopStrings::new(["STOP".to_string()]);
        // "ST" arrived earlier and was already searched; "OP" completes the match.
        assert_eq!(s.find("xxSTOP", 4).map(|m| m.at), Some(2));
    }

    #[test]
    fn holds_back_partial_stop() {
        let s = StopStrings::new(["</answer>".to_string()]);
        assert_eq!(s.safe_len("hello </ans"), 6);
        assert_eq!(s.safe_len("hello"), 5);
        assert_eq!(StopStrings::default().safe_len("abc<"), 4);
    }

    #[test]
    fn multibyte_text_is_safe() {
        let s = StopStrings::new(["é!".to_string()]);
        assert_eq!(s.find("caféé!", 5).map(|m| m.at), Some(5));
        assert_eq!(s.safe_len("café"), 3);
    }
}
