//! `ditlens encode-prompt`: a real SD3 model's text conditioning, written for comparison with
//! diffusers' `StableDiffusion3Pipeline.encode_prompt`.

use std::path::PathBuf;

use ditlens_core::io::{write_atomic, write_safetensors};
use ditlens_core::sd3::{ModelForm, PipelineParts, TextEncoders};
use serde_json::json;

use crate::cli::EncodePromptArgs;

/// Runs `encode-prompt`: writes `prompt_embeds` and `pooled_prompt_embeds`, and the token list.
pub fn encode_prompt(a: EncodePromptArgs) -> anyhow::Result<()> {
    let parts = PipelineParts::locate(&a.model)?;
    let opts = a.text.options();
    let enc = TextEncoders::open(
        &parts,
        &crate::device::compute_device()?,
        a.dtype.dtype(),
        opts,
    )?;
    let out = enc.encode(&a.prompt)?;
    if let Some(t) = &out.truncated {
        eprintln!("warning: the prompt was truncated: {t}");
    }
    let toks = enc.tokenize(&a.prompt)?;
    let pe_dims = out.prompt_embeds.dims().to_vec();
    let pooled_dims = out.pooled.dims().to_vec();
    write_safetensors(
        &a.out,
        &[
            ("prompt_embeds".to_string(), out.prompt_embeds),
            ("pooled_prompt_embeds".to_string(), out.pooled),
        ],
    )?;
    let side = a.json.clone().unwrap_or_else(|| sidecar_path(&a.out));
    let sidecar = json!({
        "prompt": a.prompt,
        "model": a.model.display().to_string(),
        "form": match parts.form { ModelForm::PipelineFolder => "pipeline_folder", ModelForm::SingleFile => "single_file" },
        "max_sequence_length": opts.max_sequence_length,
        "t5": enc.has_t5(),
        "prompt_embeds": pe_dims,
        "pooled_prompt_embeds": pooled_dims,
        "truncated": out.truncated,
        "tokens": out.tokens,
        "ids": {
            "clip_l": toks.clip_l.ids,
            "clip_g": toks.clip_g.ids,
            "t5": toks.t5.map(|t| t.ids),
        },
    });
    write_atomic(&side, serde_json::to_string_pretty(&sidecar)?.as_bytes())?;
    println!(
        "wrote {} (prompt_embeds {:?}, pooled_prompt_embeds {:?}{}) and {}",
        a.out.display(),
        pe_dims,
        pooled_dims,
        if enc.has_t5() {
            ""
        } else {
            ", T5 positions are zeros"
        },
        side.display()
    );
    Ok(())
}

/// `OUT.safetensors` → `OUT.json`.
fn sidecar_path(out: &std::path::Path) -> PathBuf {
    if out.extension().is_some_and(|e| e == "json") {
        out.with_extension("json.json")
    } else {
        out.with_extension("json")
    }
}
