//! A completion's visible text, assembled token by token for streaming.
//!
//! Two things keep text back from a stream: a token may end inside a UTF-8
//! character (byte-level tokenizers split them), and the text may be the
//! beginning of a stop string, which the API excludes from the output. The
//! assembler releases only text that can no longer change, so the deltas of a
//! stream concatenate to exactly the non-streamed content.

/// Bytes of one completion and how much of it was released.
#[derive(Debug, Default)]
pub struct TextAssembler {
    bytes: Vec<u8>,
    sent: usize,
    stops: Vec<String>,
    /// Where the first stop string begins, once seen: nothing after it is
    /// ever released.
    stop_at: Option<usize>,
}

impl TextAssembler {
    /// An assembler cutting the text at the first of `stops`.
    pub fn new(stops: &[String]) -> Self {
        TextAssembler {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Default::default()
        }
    }

    /// Adds a token's bytes; returns the text that became final.
    pub fn push(&mut self, piece: &[u8]) -> String {
        if self.stop_at.is_some() {
            return String::new();
        }
        self.bytes.extend_from_slice(piece);
        // A stop string cannot begin before `sent`: its start would have
        // been held back as a possible prefix.
        if let Some(p) = self.first_stop() {
            self.stop_at = Some(p);
            return self.release(p);
        }
        let hold = self.longest_stop_prefix_suffix();
        let end = utf8_complete_end(&self.bytes[..self.bytes.len() - hold]);
        self.release(end.max(self.sent))
    }

    /// Releases the rest (cut at a stop string); call once generation ended.
    pub fn finish(&mut self) -> String {
        let end = self.stop_at.unwrap_or(self.bytes.len());
        self.release(end)
    }

    fn release(&mut self, end: usize) -> String {
        if end <= self.sent {
            return String::new();
        }
        let text = String::from_utf8_lossy(&self.bytes[self.sent..end]).into_owned();
        self.sent = end;
        text
    }

    /// Byte offset where the earliest stop string occurs at or after `sent`.
    fn first_stop(&self) -> Option<usize> {
        let hay = &self.bytes[self.sent..];
        self.stops
            .iter()
            .filter_map(|s| {
                hay.windows(s.len())
                    .position(|w| w == s.as_bytes())
                    .map(|p| self.sent + p)
            })
            .min()
    }

    /// Length of the longest unreleased suffix that some stop string begins with.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let tail = &self.bytes[self.sent..];
        self.stops
            .iter()
            .map(|s| {
                let s = s.as_bytes();
                (1..s.len().min(tail.len() + 1))
                    .rev()
                    .find(|&k| tail.ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

/// The end of `bytes` without a trailing incomplete UTF-8 character.
fn utf8_complete_end(bytes: &[u8]) -> usize {
    // Look back at most 3 bytes for the lead byte of the last character.
    for back in 1..=bytes.len().min(4) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte
        }
        let need = match b {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1, // invalid lead byte: released as is (lossy)
        };
        return if back < need {
            bytes.len() - back
        } else {
            bytes.len()
        };
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&[u8]], stops: &[&str]) -> (Vec<String>, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut a = TextAssembler::new(&stops);
        let mut deltas: Vec<String> = pieces.iter().map(|p| a.push(p)).collect();
        deltas.push(a.finish());
        let all = deltas.concat();
        (deltas, all)
    }

    #[test]
    fn split_characters_wait_for_their_last_byte() {
        let e = "é".as_bytes(); // 2 bytes
        let (d, all) = run(&[b"caf", &e[..1], &e[1..], b"!"], &[]);
        assert_eq!(d, vec!["caf", "", "é", "!", ""]);
        assert_eq!(all, "café!");
    }

    #[test]
    fn text_is_cut_at_a_stop_string_spanning_tokens() {
        let (d, all) = run(&[b"Hello ", b"wor", b"ld", b"END", b"more"], &["ld"]);
        assert_eq!(all, "Hello wor");
        // "wor" is released at once: no stop string begins with its end.
        assert_eq!(d[0], "Hello ");
        let (d, all) = run(&[b"a<st", b"op> tail"], &["<stop>"]);
        assert_eq!(d[0], "a", "a possible stop prefix must be held back");
        assert_eq!(all, "a");
    }

    #[test]
    fn held_back_prefix_is_released_when_it_turns_out_not_to_stop() {
        let (d, all) = run(&[b"x</", b"b> y"], &["</a>"]);
        assert_eq!(d[0], "x");
        assert_eq!(all, "x</b> y");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (_, all) = run(&[b"one two three"], &["three", "two"]);
        assert_eq!(all, "one ");
    }
}
