//! Embeds the shipped models found under `assets/models/NAME/` into the binary.

use std::fmt::Write;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/models");
    println!("cargo:rerun-if-changed={}", root.display());
    let files = [
        "model.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "text_encoder.safetensors",
    ];
    let mut code = String::from(
        "/// Shipped models: (name, model.json, transformer weights, text encoder weights).\n",
    );
    code.push_str(
        "pub type Shipped = (&'static str, &'static [u8], &'static [u8], &'static [u8]);\n",
    );
    code.push_str("pub const MODELS: &[Shipped] = &[\n");
    for name in ["aligned", "plain"] {
        let dir = root.join(name);
        if files.iter().all(|f| dir.join(f).is_file()) {
            let _ = write!(code, "    (\"{name}\"");
            for f in files {
                let p = dir.join(f);
                println!("cargo:rerun-if-changed={}", p.display());
                let _ = write!(code, ", include_bytes!(r\"{}\")", p.display());
            }
            code.push_str("),\n");
        }
    }
    code.push_str("];\n");
    let judge = root.join("../shape_judge.safetensors");
    println!("cargo:rerun-if-changed={}", judge.display());
    if judge.is_file() {
        let _ = writeln!(
            code,
            "/// The sample sheet's shape classifier.\npub const JUDGE: Option<&[u8]> = Some(include_bytes!(r\"{}\"));",
            judge.display()
        );
    } else {
        code.push_str("/// The sample sheet's shape classifier (not in this build).\npub const JUDGE: Option<&[u8]> = None;\n");
    }
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("embedded_models.rs");
    std::fs::write(out, code).expect("write embedded_models.rs");
}
