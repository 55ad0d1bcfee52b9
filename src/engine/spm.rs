//! SentencePiece BPE as GGUF files describe it (`tokenizer.ggml.model =
//! "llama"`: Gemma, LLaMA-1/2, Mistral): pieces with scores, spaces written
//! as U+2581, pieces merged pairwise by the highest score of the merged
//! piece, characters outside the vocabulary spelled as `<0xXX>` byte tokens.
//! Control and user-defined tokens (`<start_of_turn>`, `\n`, runs of spaces)
//! are split out of the raw text first, as llama.cpp does.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// GGUF `tokenizer.ggml.token_type` values (SentencePiece's piece types).
pub const CONTROL: i64 = 3;
pub const USER_DEFINED: i64 = 4;
pub const BYTE: i64 = 6;

const SPACE: &str = "\u{2581}";

pub struct SentencePiece {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i64>,
    ids: HashMap<String, u32>,
    /// `<0xXX>` token of each byte.
    bytes: [Option<u32>; 256],
    unknown: Option<u32>,
    /// Control and user-defined tokens by first byte, longest first.
    specials: HashMap<u8, Vec<u32>>,
    add_space_prefix: bool,
}

impl SentencePiece {
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i64>,
        unknown: Option<u32>,
        add_space_prefix: bool,
    ) -> Result<Self, String> {
        if scores.len() != pieces.len() || types.len() != pieces.len() {
            return Err(format!(
                "{} tokens but {} scores and {} token types",
                pieces.len(),
                scores.len(),
                types.len()
            ));
        }
        let ids: HashMap<String, u32> = pieces.iter().cloned().zip(0u32..).collect();
        let mut bytes = [None; 256];
        for (b, slot) in bytes.iter_mut().enumerate() {
            *slot = ids.get(&format!("<0x{b:02X}>")).copied();
        }
        let mut specials: HashMap<u8, Vec<u32>> = HashMap::new();
        for (id, (p, &t)) in (0u32..).zip(pieces.iter().zip(&types)) {
            if matches!(t, CONTROL | USER_DEFINED) && !p.is_empty() {
                specials.entry(p.as_bytes()[0]).or_default().push(id);
            }
        }
        for list in specials.values_mut() {
            list.sort_by_key(|&id| (std::cmp::Reverse(pieces[id as usize].len()), id));
        }
        Ok(Self {
            pieces,
            scores,
            types,
            ids,
            bytes,
            unknown,
            specials,
            add_space_prefix,
        })
    }

    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    pub fn vocabulary(&self) -> impl Iterator<Item = (&str, u32)> {
        self.pieces.iter().map(String::as_str).zip(0u32..)
    }

    /// Token ids of `text` (no BOS: the caller adds it).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut plain_start = 0;
        let mut first_fragment = true;
        let mut at = 0;
        let bytes = text.as_bytes();
        while at < bytes.len() {
            let Some(id) = self.special_at(&text[at..]) else {
                at += 1;
                while at < bytes.len() && !text.is_char_boundary(at) {
                    at += 1;
                }
                continue;
            };
            self.encode_plain(&text[plain_start..at], first_fragment, &mut out);
            first_fragment = false;
            out.push(id);
            at += self.pieces[id as usize].len();
            plain_start = at;
        }
        self.encode_plain(&text[plain_start..], first_fragment, &mut out);
        out
    }

    /// The longest control or user-defined token at the start of `text`.
    fn special_at(&self, text: &str) -> Option<u32> {
        let first = *text.as_bytes().first()?;
        self.specials
            .get(&first)?
            .iter()
            .copied()
            .find(|&id| text.starts_with(self.pieces[id as usize].as_str()))
    }

    /// BPE of text holding no special tokens.
    fn encode_plain(&self, text: &str, first: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut norm = String::with_capacity(text.len() + 3);
        if first && self.add_space_prefix {
            norm.push_str(SPACE);
        }
        norm.push_str(&text.replace(' ', SPACE));
        // Symbols: one per character, as a linked list over `norm`.
        let mut sym: Vec<Symbol> = norm
            .char_indices()
            .map(|(i, c)| Symbol {
                start: i,
                len: c.len_utf8(),
                prev: None,
                next: None,
            })
            .collect();
        let n = sym.len();
        for (i, s) in sym.iter_mut().enumerate() {
            s.prev = i.checked_sub(1);
            s.next = (i + 1 < n).then_some(i + 1);
        }
        let mut queue = BinaryHeap::new();
        for i in 1..n {
            self.push_bigram(&norm, &sym, i - 1, i, &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (b.left, b.right);
            // Stale: one side has merged since this pair was queued.
            if sym[l].len == 0 || sym[r].len == 0 || sym[l].len + sym[r].len != b.len {
                continue;
            }
            sym[l].len += sym[r].len;
            sym[r].len = 0;
            sym[l].next = sym[r].next;
            if let Some(next) = sym[r].next {
                sym[next].prev = Some(l);
            }
            if let Some(prev) = sym[l].prev {
                self.push_bigram(&norm, &sym, prev, l, &mut queue);
            }
            if let Some(next) = sym[l].next {
                self.push_bigram(&norm, &sym, l, next, &mut queue);
            }
        }
        let mut i = Some(0);
        while let Some(at) = i {
            let s = &sym[at];
            let piece = &norm[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                // Only single characters stay unmerged outside the vocabulary.
                None => out.extend(
                    piece
                        .bytes()
                        .filter_map(|b| self.bytes[b as usize].or(self.unknown)),
                ),
            }
            i = s.next;
        }
    }

    fn push_bigram(
        &self,
        norm: &str,
        sym: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        let (l, r) = (&sym[left], &sym[right]);
        let len = l.len + r.len;
        let Some(&id) = self.ids.get(&norm[l.start..l.start + len]) else {
            return;
        };
        queue.push(Bigram {
            score: self.scores[id as usize],
            left,
            right,
            len,
        });
    }

    /// UTF-8 bytes of `ids`: U+2581 back to spaces, byte tokens as bytes,
    /// control tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            let Some(piece) = self.pieces.get(id as usize) else {
                continue;
            };
            match self.types[id as usize] {
                CONTROL => {}
                BYTE => match piece
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => out.push(b),
                    None => out.extend_from_slice(piece.as_bytes()),
                },
                _ => out.extend_from_slice(piece.replace(SPACE, " ").as_bytes()),
            }
        }
        if self.add_space_prefix && out.first() == Some(&b' ') {
            out.remove(0);
        }
        out
    }
}

struct Symbol {
    start: usize,
    /// 0 once merged into its left neighbour.
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge: the highest score first, then the leftmost.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

#[cfg(test)]
mod tests {
    use super::*;

    const NORMAL: i64 = 1;

    /// A toy vocabulary: merges by score, byte fallback, specials whole.
    fn toy() -> SentencePiece {
        let mut pieces: Vec<(String, f32, i64)> = vec![
            ("<unk>".into(), 0.0, 2),
            ("<bos>".into(), 0.0, CONTROL),
            ("\n".into(), 0.0, USER_DEFINED),
            ("▁".into(), -1.0, NORMAL),
            ("a".into(), -1.0, NORMAL),
            ("b".into(), -1.0, NORMAL),
            ("c".into(), -1.0, NORMAL),
            ("ab".into(), -3.0, NORMAL),
            ("bc".into(), -2.0, NORMAL),
            ("▁a".into(), -2.5, NORMAL),
        ];
        pieces.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0, BYTE)));
        let (p, rest): (Vec<_>, Vec<_>) = pieces.into_iter().map(|(p, s, t)| (p, (s, t))).unzip();
        let (s, t) = rest.into_iter().unzip();
        SentencePiece::new(p, s, t, Some(0), false).unwrap()
    }

    fn pieces(sp: &SentencePiece, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&i| sp.piece(i).unwrap().to_string())
            .collect()
    }

    #[test]
    fn merges_the_best_scoring_pair_first() {
        let sp = toy();
        // "bc" (-2) beats "ab" (-3), and then "a"+"bc" is not a piece.
        assert_eq!(pieces(&sp, &sp.encode("abc")), ["a", "bc"]);
        assert_eq!(pieces(&sp, &sp.encode("ab")), ["ab"]);
        assert_eq!(pieces(&sp, &sp.encode(" a c")), ["▁a", "▁", "c"]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes_and_decode_back() {
        let sp = toy();
        let ids = sp.encode("aé\n<bos>b");
        assert_eq!(
            pieces(&sp, &ids),
            ["a", "<0xC3>", "<0xA9>", "\n", "<bos>", "b"]
        );
        assert_eq!(sp.decode(&ids), "aé\nb".as_bytes());
    }
}
