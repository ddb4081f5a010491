//! The memory budget of a probe: what a capture will take per head and as head means, and the
//! choice between them (`--max-memory`), stated rather than silent.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Default budget for the kept tensors: 2 GiB, comfortable on a laptop.
pub const DEFAULT_MAX_MEMORY: u64 = 2 << 30;

/// Parses a byte count: `1048576`, `64k`, `512M`, `2G`, `1.5GiB`, `300MB` (binary multiples).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        Error::Input(format!(
            "memory size `{s}` is not a number of bytes like 512M, 2G or 1.5GiB"
        ))
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Human-readable byte count (binary units).
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        match self.0 {
            n if n >= 1 << 30 => write!(f, "{:.2} GiB", b / (1u64 << 30) as f64),
            n if n >= 1 << 20 => write!(f, "{:.1} MiB", b / (1u64 << 20) as f64),
            n if n >= 1 << 10 => write!(f, "{:.1} KiB", b / 1024.0),
            n => write!(f, "{n} B"),
        }
    }
}

/// How the per-head attention maps (i2t, t2i) are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadStorage {
    /// Every head: `i2t [1,H,N,L]`, `t2i [1,H,L,N]`.
    PerHead,
    /// The mean over heads only: `i2t [1,1,N,L]`, `t2i [1,1,L,N]`.
    HeadMean,
}

/// What one probe records, for sizing (all f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureSize {
    pub kept_steps: usize,
    pub layers: usize,
    pub heads: usize,
    pub n_img: usize,
    pub n_txt: usize,
    /// Hidden size D of the image-token Q/K/V features.
    pub hidden: usize,
    /// Blocks whose image Q/K/V are kept.
    pub qkv_layers: usize,
    pub i2t: bool,
    pub t2i: bool,
    pub row_share: bool,
    pub value_norm: bool,
}

impl CaptureSize {
    /// Bytes the kept tensors take under `storage`.
    pub fn bytes(&self, storage: HeadStorage) -> u64 {
        let (h, n, l) = (self.heads as u64, self.n_img as u64, self.n_txt as u64);
        let maps_h = match storage {
            HeadStorage::PerHead => h,
            HeadStorage::HeadMean => 1,
        };
        let per_layer = maps_h * n * l * (self.i2t as u64 + self.t2i as u64)
            + if self.row_share { h * 4 } else { 0 }
            + if self.value_norm { h * (n + l) } else { 0 };
        let qkv = self.qkv_layers as u64 * 3 * n * self.hidden as u64;
        4 * self.kept_steps as u64 * (self.layers as u64 * per_layer + qkv)
    }
}

/// The decision a budget made, recorded in the probe's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryPlan {
    pub budget_bytes: u64,
    pub per_head_bytes: u64,
    pub head_mean_bytes: u64,
    /// How i2t and t2i are kept (row_share and value norms are always per head).
    pub storage: HeadStorage,
    pub stored_bytes: u64,
    /// One sentence saying what was kept and why.
    pub note: String,
}

/// Chooses per-head storage when it fits `budget`, else head means; an error when even head
/// means do not fit (nothing is ever dropped silently).
pub fn plan(size: &CaptureSize, budget: u64) -> Result<MemoryPlan> {
    let per_head = size.bytes(HeadStorage::PerHead);
    let mean = size.bytes(HeadStorage::HeadMean);
    let (storage, stored, note) = if per_head <= budget {
        (
            HeadStorage::PerHead,
            per_head,
            format!(
                "all {} heads kept ({} of the {} budget)",
                size.heads,
                Bytes(per_head),
                Bytes(budget)
            ),
        )
    } else if mean <= budget {
        (
            HeadStorage::HeadMean,
            mean,
            format!(
                "i2t and t2i kept as the mean over the {} heads only: per head they would take {}, \
                 over the {} budget (--max-memory); row_share and value norms stay per head",
                size.heads,
                Bytes(per_head),
                Bytes(budget)
            ),
        )
    } else {
        return Err(Error::Input(format!(
            "the capture needs {} even with head means only ({} per head), over the {} budget; \
             keep fewer steps (--steps-to-keep), fewer Q/K/V layers, or raise --max-memory",
            Bytes(mean),
            Bytes(per_head),
            Bytes(budget)
        )));
    };
    Ok(MemoryPlan {
        budget_bytes: budget,
        per_head_bytes: per_head,
        head_mean_bytes: mean,
        storage,
        stored_bytes: stored,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size() -> CaptureSize {
        CaptureSize {
            kept_steps: 2,
            layers: 3,
            heads: 4,
            n_img: 16,
            n_txt: 5,
            hidden: 8,
            qkv_layers: 1,
            i2t: true,
            t2i: true,
            row_share: true,
            value_norm: true,
        }
    }

    #[test]
    fn bytes_by_hand() {
        // Per layer: 4·16·5·2 maps + 16 shares + 4·21 norms = 740 floats; qkv 3·16·8 = 384.
        assert_eq!(size().bytes(HeadStorage::PerHead), 4 * 2 * (3 * 740 + 384));
        // Head mean: 16·5·2 + 16 + 84 = 260 floats per layer.
        assert_eq!(size().bytes(HeadStorage::HeadMean), 4 * 2 * (3 * 260 + 384));
    }

    #[test]
    fn budget_switches_to_head_mean_then_refuses() {
        let s = size();
        let (ph, hm) = (
            s.bytes(HeadStorage::PerHead),
            s.bytes(HeadStorage::HeadMean),
        );
        assert_eq!(plan(&s, ph).unwrap().storage, HeadStorage::PerHead);
        let p = plan(&s, ph - 1).unwrap();
        assert_eq!(p.storage, HeadStorage::HeadMean);
        assert_eq!(p.stored_bytes, hm);
        assert!(p.note.contains("mean over the 4 heads"), "{}", p.note);
        let e = plan(&s, hm - 1).unwrap_err().to_string();
        assert!(
            e.contains("--max-memory") && e.contains("--steps-to-keep"),
            "{e}"
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("64k").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        for bad in ["", "G", "2X", "-1", "0"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(Bytes(3 << 29).to_string(), "1.50 GiB");
    }
}
