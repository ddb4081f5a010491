//! The SD3 tokenizers: CLIP byte-level BPE (built from `vocab.json` + `merges.txt`) and T5
//! (`tokenizer.json`), with padding and truncation exactly as diffusers' `StableDiffusion3Pipeline`
//! asks of them.
//!
//! Reference: transformers v5.23 `models/clip/tokenization_clip.py` (`CLIPTokenizer`: NFC,
//! `\s+` → " ", lower-case; CLIP split regex with `Removed` + invert, then byte-level without a
//! prefix space; BPE with the `</w>` end-of-word suffix; `RobertaProcessing` adding BOS/EOS; the
//! bos/eos/unk/pad tokens registered as special added tokens, so CLIP-G's pad `!` is matched as
//! one special token), `models/t5/tokenization_t5.py` (`T5Tokenizer`: the Unigram model of
//! `tokenizer.json` with `WhitespaceSplit` + `Metaspace("▁", always, split)` and the `$A </s>`
//! template), and diffusers v0.42.1 `pipeline_stable_diffusion_3.py`
//! (`_get_clip_prompt_embeds`: `padding="max_length", max_length=77, truncation=True`, the dropped
//! text decoded from the untruncated ids `[76:-1]`; `_get_t5_prompt_embeds`: the same with
//! `max_length=max_sequence_length`).

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};

/// The pattern of transformers' `CLIPTokenizer` pre-tokenizer (v5.23).
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// One tokenizer's view of a prompt, padded to its fixed length.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    /// Token ids, exactly `len` of them.
    pub ids: Vec<u32>,
    /// The token string of each id (as transformers' `convert_ids_to_tokens`).
    pub tokens: Vec<String>,
    /// Whether the position is padding (after the end-of-sequence token).
    pub is_padding: Vec<bool>,
    /// Whether the position holds a special token (BOS, EOS, padding).
    pub is_special: Vec<bool>,
    /// The text truncation dropped, decoded as diffusers' warning decodes it.
    pub dropped: Option<String>,
}

/// Reads `tokenizer_config.json` (and `special_tokens_map.json`) of a tokenizer folder.
struct TokenizerConfig {
    values: Vec<serde_json::Value>,
}

impl TokenizerConfig {
    fn read(dir: &Path) -> Result<Self> {
        let mut values = vec![];
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let p = dir.join(name);
            if p.is_file() {
                let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
                let v = serde_json::from_str(&text).map_err(|e| Error::Tokenizer {
                    path: p.clone(),
                    reason: format!("not JSON: {e}"),
                })?;
                values.push(v);
            }
        }
        Ok(TokenizerConfig { values })
    }

    /// A special token's content: a string, or `{"content": …}` as older files store it.
    fn token(&self, key: &str) -> Option<String> {
        self.values.iter().find_map(|v| {
            let t = v.get(key)?;
            t.as_str().map(str::to_string).or_else(|| {
                t.get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
            })
        })
    }

    fn usize(&self, key: &str) -> Option<usize> {
        self.values
            .iter()
            .find_map(|v| v.get(key).and_then(|x| x.as_u64()))
            .and_then(|x| usize::try_from(x).ok())
    }
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn require_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Tokenizer {
            path: dir.to_path_buf(),
            reason: format!("`{name}` is missing"),
        })
    }
}

fn id_of(tok: &Tokenizer, dir: &Path, token: &str, role: &str) -> Result<u32> {
    tok.token_to_id(token).ok_or_else(|| Error::Tokenizer {
        path: dir.to_path_buf(),
        reason: format!("{role} token `{token}` is not in the vocabulary"),
    })
}

/// Truncates `full` (ending with EOS) to `len` keeping EOS last, then pads with `pad`, as
/// diffusers' tokenizer calls do. Returns the ids, how many are content (not padding), and the
/// dropped text as diffusers' warning decodes it (`untruncated_ids[:, len - 1 : -1]`).
fn truncate_and_pad(
    full: Vec<u32>,
    len: usize,
    eos: u32,
    pad: u32,
    decode: impl Fn(&[u32]) -> Result<String>,
) -> Result<(Vec<u32>, usize, Option<String>)> {
    let (mut ids, dropped) = if full.len() > len {
        let mut ids = full[..len - 1].to_vec();
        ids.push(eos);
        (ids, Some(decode(&full[len - 1..full.len() - 1])?))
    } else {
        (full, None)
    };
    let content = ids.len();
    ids.resize(len, pad);
    Ok((ids, content, dropped))
}

fn token_strings(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&i| tok.id_to_token(i).unwrap_or_default())
        .collect()
}

/// CLIP's tokenizer (CLIP-L or CLIP-G): 77 tokens, BOS … EOS, then the tokenizer's own pad token.
pub struct ClipTokenizer {
    tok: Tokenizer,
    /// The folder it was read from.
    pub dir: PathBuf,
    pub bos_id: u32,
    pub eos_id: u32,
    pub pad_id: u32,
    /// The pad token (`<|endoftext|>` for SD3's CLIP-L, `!` for CLIP-G).
    pub pad_token: String,
    /// `model_max_length` (77).
    pub max_length: usize,
}

impl ClipTokenizer {
    /// Builds the tokenizer from a folder with `vocab.json` + `merges.txt` (+ `tokenizer_config.json`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Tokenizer {
                path: dir.to_path_buf(),
                reason: "folder not found".into(),
            });
        }
        let cfg = TokenizerConfig::read(dir)?;
        let vocab = require_file(dir, "vocab.json")?;
        let merges = require_file(dir, "merges.txt")?;
        let bos = cfg
            .token("bos_token")
            .unwrap_or_else(|| "<|startoftext|>".into());
        let eos = cfg
            .token("eos_token")
            .unwrap_or_else(|| "<|endoftext|>".into());
        let unk = cfg
            .token("unk_token")
            .unwrap_or_else(|| "<|endoftext|>".into());
        let pad = cfg
            .token("pad_token")
            .unwrap_or_else(|| "<|endoftext|>".into());
        let max_length = cfg.usize("model_max_length").unwrap_or(77);
        if max_length == 0 || max_length > 4096 {
            return Err(Error::Tokenizer {
                path: dir.to_path_buf(),
                reason: format!("model_max_length {max_length} is not a usable CLIP length"),
            });
        }
        let path_str = |p: &Path| p.to_string_lossy().into_owned();
        let bpe = BPE::from_file(&path_str(&vocab), &path_str(&merges))
            .end_of_word_suffix("</w>".into())
            .continuing_subword_prefix(String::new())
            .unk_token(unk.clone())
            .fuse_unk(false)
            .build()
            .map_err(|e| tok_err(dir, format!("cannot read vocab.json / merges.txt: {e}")))?;
        let mut tok = Tokenizer::new(bpe);
        let replace = Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(|e| tok_err(dir, e))?;
        tok.with_normalizer(Some(NormSequence::new(vec![
            NFC.into(),
            replace.into(),
            Lowercase.into(),
        ])))
        .map_err(|e| tok_err(dir, e))?;
        let split = Split::new(
            SplitPattern::Regex(CLIP_SPLIT.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| tok_err(dir, e))?;
        tok.with_pre_tokenizer(Some(PreSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        // transformers registers bos/eos/unk/pad as special added tokens (not normalised).
        let mut specials = vec![];
        for t in [&bos, &eos, &unk, &pad] {
            if !specials.contains(t) {
                specials.push(t.clone());
            }
        }
        let added: Vec<AddedToken> = specials
            .iter()
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        tok.add_special_tokens(added).map_err(|e| tok_err(dir, e))?;
        let bos_id = id_of(&tok, dir, &bos, "bos")?;
        let eos_id = id_of(&tok, dir, &eos, "eos")?;
        let pad_id = id_of(&tok, dir, &pad, "pad")?;
        if tok.get_vocab_size(true) < 3 {
            return Err(Error::Tokenizer {
                path: dir.to_path_buf(),
                reason: "vocab.json is (nearly) empty".into(),
            });
        }
        Ok(ClipTokenizer {
            tok,
            dir: dir.to_path_buf(),
            bos_id,
            eos_id,
            pad_id,
            pad_token: pad,
            max_length,
        })
    }

    /// The untruncated ids with BOS and EOS (as `tokenizer(prompt, padding="longest")`).
    ///
    /// # Shapes
    /// prompt → n + 2 ids (BOS, the n prompt tokens, EOS), not truncated.
    pub fn encode_full(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .tok
            .encode(prompt, false)
            .map_err(|e| tok_err(&self.dir, format!("cannot tokenize the prompt: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        ids.push(self.bos_id);
        ids.extend_from_slice(enc.get_ids());
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// Tokenizes to `max_length` (77): BOS, at most `max_length − 2` prompt tokens, EOS, then
    /// the pad token.
    pub fn tokenize(&self, prompt: &str) -> Result<Tokenized> {
        let full = self.encode_full(prompt)?;
        let n = self.max_length;
        let (ids, content, dropped) =
            truncate_and_pad(full, n, self.eos_id, self.pad_id, |d| self.decode(d))?;
        let is_special = (0..n).map(|i| i == 0 || i + 1 >= content).collect();
        Ok(Tokenized {
            tokens: token_strings(&self.tok, &ids),
            is_padding: (0..n).map(|i| i >= content).collect(),
            ids,
            is_special,
            dropped,
        })
    }

    /// Decodes ids as transformers' `CLIPTokenizer.decode` does: byte-level decoding with special
    /// tokens kept, `</w>` → space, stripped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self
            .tok
            .decode(ids, false)
            .map_err(|e| tok_err(&self.dir, e))?;
        Ok(text.replace("</w>", " ").trim().to_string())
    }

    /// Number of ids the tokenizer can produce.
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }
}

/// T5's tokenizer: the prompt, `</s>`, then `<pad>` up to `max_sequence_length`.
pub struct T5Tokenizer {
    tok: Tokenizer,
    pub dir: PathBuf,
    pub eos_id: u32,
    pub pad_id: u32,
}

impl T5Tokenizer {
    /// Reads `tokenizer.json` (+ `tokenizer_config.json`) of a T5 tokenizer folder; the
    /// pre-tokenizer is set as transformers' `T5Tokenizer` sets it at load time.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Tokenizer {
                path: dir.to_path_buf(),
                reason: "folder not found".into(),
            });
        }
        let file = require_file(dir, "tokenizer.json")?;
        let cfg = TokenizerConfig::read(dir)?;
        let mut tok = Tokenizer::from_file(&file)
            .map_err(|e| tok_err(&file, format!("cannot read tokenizer.json: {e}")))?;
        tok.with_pre_tokenizer(Some(PreSequence::new(vec![
            WhitespaceSplit.into(),
            Metaspace::new('▁', PrependScheme::Always, true).into(),
        ])));
        tok.with_truncation(None).map_err(|e| tok_err(&file, e))?;
        tok.with_padding(None);
        let eos = cfg.token("eos_token").unwrap_or_else(|| "</s>".into());
        let pad = cfg.token("pad_token").unwrap_or_else(|| "<pad>".into());
        let eos_id = id_of(&tok, dir, &eos, "eos")?;
        let pad_id = id_of(&tok, dir, &pad, "pad")?;
        Ok(T5Tokenizer {
            tok,
            dir: dir.to_path_buf(),
            eos_id,
            pad_id,
        })
    }

    /// The untruncated ids with `</s>` appended.
    ///
    /// # Shapes
    /// prompt → n + 1 ids (the n prompt tokens, `</s>`), not truncated.
    pub fn encode_full(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .tok
            .encode(prompt, false)
            .map_err(|e| tok_err(&self.dir, format!("cannot tokenize the prompt: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// Tokenizes to exactly `len` ids: at most `len − 1` prompt tokens, `</s>`, then `<pad>`.
    pub fn tokenize(&self, prompt: &str, len: usize) -> Result<Tokenized> {
        if len == 0 {
            return Err(Error::Input(
                "max_sequence_length must be at least 1".into(),
            ));
        }
        let full = self.encode_full(prompt)?;
        let (ids, content, dropped) =
            truncate_and_pad(full, len, self.eos_id, self.pad_id, |d| self.decode(d))?;
        let is_special = (0..len).map(|i| i + 1 >= content).collect();
        Ok(Tokenized {
            tokens: token_strings(&self.tok, &ids),
            is_padding: (0..len).map(|i| i >= content).collect(),
            ids,
            is_special,
            dropped,
        })
    }

    /// Decodes ids with special tokens kept (as transformers' `decode`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok
            .decode(ids, false)
            .map_err(|e| tok_err(&self.dir, e))
    }

    /// Number of ids the tokenizer can produce.
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }
}
