//! A tiny embedded model shared by the unit tests: `EmbeddedConfig::tiny()`, random weights
//! opened by a few training steps (adaLN-Zero gates start closed).

use std::sync::OnceLock;

use candle_core::Device;

use super::{EmbeddedConfig, EmbeddedModel, ToyConfig, TrainConfig, Trainer};

/// The shared tiny model (built once per test process).
pub fn tiny_model() -> &'static EmbeddedModel {
    static MODEL: OnceLock<EmbeddedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let cfg = ToyConfig {
            model: EmbeddedConfig::tiny(),
            train: TrainConfig {
                steps: 4,
                batch: 2,
                lr: 3e-3,
                warmup: 1,
                ..TrainConfig::default_toy(false)
            },
        };
        let mut t = Trainer::new(cfg, &Device::Cpu).expect("tiny trainer");
        for _ in 0..4 {
            t.train_step().expect("train step");
        }
        t.model().clone()
    })
}
