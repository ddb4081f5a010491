//! Word-level tokenizer of the embedded model: the shapes world's fixed vocabulary plus BOS/EOS,
//! padded to a fixed length with EOS as CLIP-L pads with `<|endoftext|>`.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::shapes::vocabulary;

pub const BOS: &str = "<bos>";
pub const EOS: &str = "<eos>";

/// One tokenized prompt: ids, strings and roles of every position (padding included).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// The string of every position, for labelling.
    pub strings: Vec<String>,
    /// Whether the position is padding (after the first EOS).
    pub is_padding: Vec<bool>,
    /// For each word of the prompt, its token positions (one each: the vocabulary is word-level).
    pub words: Vec<Vec<usize>>,
}

impl Tokens {
    /// Positions of BOS, EOS and padding.
    pub fn is_special(&self, i: usize) -> bool {
        i == 0 || self.strings.get(i).is_some_and(|s| s == EOS)
    }
}

/// The tokenizer: `[BOS, EOS, vocabulary…]`.
#[derive(Debug, Clone)]
pub struct WordTokenizer {
    vocab: Vec<String>,
    max_len: usize,
}

impl WordTokenizer {
    /// The shapes world's tokenizer with sequences of `max_len` positions.
    pub fn shapes(max_len: usize) -> Self {
        let mut vocab = vec![BOS.to_string(), EOS.to_string()];
        vocab.extend(vocabulary().iter().map(|w| w.to_string()));
        Self { vocab, max_len }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The words it knows (without BOS/EOS).
    pub fn words(&self) -> &[String] {
        &self.vocab[2..]
    }

    /// Id of a word, or a clear error listing the vocabulary.
    pub fn id(&self, word: &str) -> Result<u32> {
        self.vocab
            .iter()
            .position(|w| w == word)
            .filter(|&i| i >= 2)
            .map(|i| i as u32)
            .ok_or_else(|| {
                Error::Input(format!(
                    "unknown word `{word}`; the embedded model knows: {}",
                    self.words().join(", ")
                ))
            })
    }

    /// Tokenizes a prompt (lower-cased, split on whitespace and commas).
    pub fn encode(&self, prompt: &str) -> Result<Tokens> {
        let lower = prompt.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| c.is_whitespace() || c == ',' || c == '.')
            .filter(|w| !w.is_empty())
            .collect();
        if words.len() + 2 > self.max_len {
            return Err(Error::Input(format!(
                "prompt has {} words; the embedded model takes at most {}",
                words.len(),
                self.max_len - 2
            )));
        }
        let mut ids = vec![0u32];
        let mut strings = vec![BOS.to_string()];
        let mut word_pos = vec![];
        for w in &words {
            word_pos.push(vec![ids.len()]);
            ids.push(self.id(w)?);
            strings.push(w.to_string());
        }
        let eos_at = ids.len();
        while ids.len() < self.max_len {
            ids.push(1);
            strings.push(EOS.to_string());
        }
        let is_padding = (0..self.max_len).map(|i| i > eos_at).collect();
        Ok(Tokens {
            ids,
            strings,
            is_padding,
            words: word_pos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_with_eos_and_names_unknown_words() {
        let t = WordTokenizer::shapes(8);
        let k = t.encode("Red circle, background").unwrap();
        assert_eq!(
            k.strings,
            [
                "<bos>",
                "red",
                "circle",
                "background",
                "<eos>",
                "<eos>",
                "<eos>",
                "<eos>"
            ]
        );
        assert_eq!(
            k.is_padding,
            [false, false, false, false, false, true, true, true]
        );
        assert_eq!(k.words, vec![vec![1], vec![2], vec![3]]);
        let e = t.encode("a red dog").unwrap_err().to_string();
        assert!(e.contains("unknown word `dog`") && e.contains("circle"));
        assert!(t.encode("a b c d e f g").is_err());
        assert_eq!(t.encode("").unwrap().ids, [0, 1, 1, 1, 1, 1, 1, 1]);
    }
}
