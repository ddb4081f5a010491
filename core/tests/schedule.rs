//! The FlowMatchEuler schedule against diffusers' own tables (`tests/fixtures/scheduler.json`).

use candle_core::{Device, Tensor};
use ditlens_core::schedule::FlowMatchEuler;

#[test]
fn matches_diffusers_tables_and_step() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/scheduler.json");
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let f = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for c in cases {
        let sched = FlowMatchEuler {
            shift: c["shift"].as_f64().unwrap(),
            num_train_timesteps: 1000,
        }
        .schedule(c["steps"].as_u64().unwrap() as usize)
        .unwrap();
        let (sig, ts) = (f(&c["sigmas"]), f(&c["timesteps"]));
        assert_eq!(sched.sigmas.len(), sig.len());
        for (a, b) in sched.sigmas.iter().zip(&sig) {
            assert!((a - b).abs() <= 1e-7, "σ {a} vs {b} ({c:?})");
        }
        for (a, b) in sched.timesteps.iter().zip(&ts) {
            assert!((a - b).abs() <= 1e-4, "t {a} vs {b}");
        }
        let i = c["step_index"].as_u64().unwrap() as usize;
        let dev = Device::Cpu;
        let x = Tensor::new(f(&c["step_sample"]), &dev).unwrap();
        let v = Tensor::new(f(&c["step_velocity"]), &dev).unwrap();
        let got: Vec<f32> = sched.step(i, &x, &v).unwrap().to_vec1().unwrap();
        for (a, b) in got.iter().zip(f(&c["step_prev"])) {
            assert!((a - b).abs() <= 1e-6, "step {a} vs {b}");
        }
    }
}
