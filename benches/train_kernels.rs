//! Where a training step's time goes, kernel by kernel, on Qwen2.5-0.5B's
//! shapes with synthetic weights (no assets needed): GFLOP/s of each kernel the
//! trainer calls, and its ratio to the f32 `x W^T` product measured in the
//! same run (the machine is shared and noisy, so only ratios travel).
//!
//!     cargo bench --bench train_kernels            # the table (T = 512)
//!     cargo bench --bench train_kernels -- 2048    # another sequence length
//!
//! (`cargo test --release --bench train_kernels -- --bench` does the same with
//! the test build, which shares the release build of llama.cpp.)
//!
//! Under `cargo test` it runs each kernel once on a short sequence and checks
//! the outputs are finite, so the bench cannot rot unnoticed.

mod common;
use common::{args_and_tokens, median_secs, values};

use cleaner::kernels::attention::{attention_backward_in, attention_forward_in, AttnShape};
use cleaner::kernels::cpu::kernels;
use cleaner::kernels::matmul::{
    lora_products, matmul_tn, matmul_w, matmul_w_in, matmul_wt, matmul_wt_in, Outer, Precision,
    Project, Weights,
};
use cleaner::kernels::quant::{synthetic::random_tensor, QuantType};

/// Qwen2.5-0.5B: model width, feed-forward width, heads, KV heads, head width.
const N_EMBD: usize = 896;
const N_FF: usize = 4864;
const N_HEAD: usize = 14;
const N_HEAD_KV: usize = 2;
const HEAD_DIM: usize = 64;
const RANK: usize = 16;

fn main() {
    let (_, bench, n_tok) = args_and_tokens();
    let reps = if bench { 5 } else { 0 };

    let x = values(n_tok * N_EMBD, 1);
    let w_f32 = values(N_FF * N_EMBD, 2);
    let w_q8 = random_tensor(QuantType::Q8_0, N_FF * N_EMBD, 3).expect("whole blocks");
    let w_q5 = random_tensor(QuantType::Q5_0, N_FF * N_EMBD, 4).expect("whole blocks");
    let weights = |ty| match ty {
        QuantType::Q8_0 => Weights::quantized(ty, &w_q8, N_FF, N_EMBD).expect("shape"),
        QuantType::Q5_0 => Weights::quantized(ty, &w_q5, N_FF, N_EMBD).expect("shape"),
        _ => Weights::f32(&w_f32, N_FF, N_EMBD),
    };
    let mut y = vec![0f32; n_tok * N_FF];
    let mut rows = Vec::new();
    let proj_flops = 2.0 * (n_tok * N_EMBD * N_FF) as f64;

    let mut baseline = 0.0;
    for (name, ty) in [
        ("x W^T, f32 weights (baseline)", QuantType::F32),
        ("x W^T, Q8_0 weights", QuantType::Q8_0),
        ("x W^T, Q5_0 weights", QuantType::Q5_0),
    ] {
        let w = weights(ty);
        let s = median_secs(1, reps, || matmul_wt(&x, n_tok, &w, &mut y));
        if ty == QuantType::F32 {
            baseline = proj_flops / s;
        }
        rows.push((name, proj_flops / s));
        assert!(y.iter().all(|v| v.is_finite()), "{name}: non-finite output");
    }
    // The backward's input gradient: dy W through the same quantized matrix.
    let dy = values(n_tok * N_FF, 5);
    let mut dx = vec![0f32; n_tok * N_EMBD];
    let w = weights(QuantType::Q8_0);
    let s = median_secs(1, reps, || matmul_w(&dy, n_tok, &w, &mut dx));
    rows.push(("dy W (input gradient), Q8_0", proj_flops / s));
    assert!(dx.iter().all(|v| v.is_finite()), "dy W: non-finite output");
    // The same two products in bf16 (f32 where the CPU lacks AVX-512 BF16).
    let bf16 = Precision::Bf16.effective() == Precision::Bf16;
    let s = median_secs(1, reps, || {
        matmul_wt_in(Precision::Bf16, &x, n_tok, &w, &mut y)
    });
    rows.push((
        if bf16 {
            "x W^T, Q8_0, bf16"
        } else {
            "x W^T, Q8_0, bf16 (no AVX-512 BF16: f32)"
        },
        proj_flops / s,
    ));
    assert!(
        y.iter().all(|v| v.is_finite()),
        "bf16 x W^T: non-finite output"
    );
    let s = median_secs(1, reps, || {
        matmul_w_in(Precision::Bf16, &dy, n_tok, &w, &mut dx)
    });
    rows.push((
        if bf16 {
            "dy W, Q8_0, bf16"
        } else {
            "dy W, Q8_0, bf16 (no AVX-512 BF16: f32)"
        },
        proj_flops / s,
    ));
    assert!(
        dx.iter().all(|v| v.is_finite()),
        "bf16 dy W: non-finite output"
    );
    // LoRA's weight gradients: dA = g^T x ([rank, n_in]), dB = dy^T u.
    let g = values(n_tok * RANK, 6);
    let mut da = vec![0f32; RANK * N_EMBD];
    let mut db = vec![0f32; N_FF * RANK];
    let s = median_secs(1, reps, || {
        matmul_tn(&g, &x, n_tok, &mut da, false);
        matmul_tn(&dy, &g, n_tok, &mut db, false);
    });
    rows.push((
        "LoRA dA + dB (a^T b)",
        2.0 * (n_tok * RANK * (N_EMBD + N_FF)) as f64 / s,
    ));
    assert!(
        da.iter().chain(&db).all(|v| v.is_finite()),
        "LoRA grads: non-finite"
    );
    // LoRA's products on activations, forward (u = x A^T, then u B^T) and
    // backward (g = dy B, then g A): thin ones, rank columns or rank deep.
    let a = values(RANK * N_EMBD, 11);
    let b = values(N_FF * RANK, 12);
    let mut u = vec![0f32; n_tok * RANK];
    let s = median_secs(1, reps, || {
        matmul_wt(&x, n_tok, &Weights::f32(&a, RANK, N_EMBD), &mut u);
        matmul_wt(&u, n_tok, &Weights::f32(&b, N_FF, RANK), &mut y);
    });
    let lora_flops = 2.0 * (n_tok * RANK * (N_EMBD + N_FF)) as f64;
    rows.push(("LoRA forward x A^T, u B^T", lora_flops / s));
    let mut gd = vec![0f32; n_tok * RANK];
    let s = median_secs(1, reps, || {
        matmul_w(&dy, n_tok, &Weights::f32(&b, N_FF, RANK), &mut gd);
        matmul_w(&gd, n_tok, &Weights::f32(&a, RANK, N_EMBD), &mut dx);
    });
    rows.push(("LoRA input gradient dy B, g A", lora_flops / s));
    assert!(
        y.iter().chain(&dx).all(|v| v.is_finite()),
        "LoRA products: non-finite"
    );
    // LoRA's whole backward on the activations at the feed-forward's shape
    // (g = dy B, dB += dy^T u, dA^T += x^T g): on the general kernels, each
    // product reading its wide operand, and in lora_products' passes, the
    // first reading dy once for g and dB.
    let backward_flops = 2.0 * (n_tok * RANK * (2 * N_FF + N_EMBD)) as f64;
    let (mut db_t, mut da_t) = (vec![0f32; N_FF * RANK], vec![0f32; N_EMBD * RANK]);
    let s = median_secs(1, reps, || {
        matmul_w(&dy, n_tok, &Weights::f32(&b, N_FF, RANK), &mut gd);
        matmul_tn(&dy, &u, n_tok, &mut db_t, true);
        matmul_tn(&x, &gd, n_tok, &mut da_t, true);
    });
    rows.push((
        "LoRA backward dy B, dy^T u, x^T g: apart",
        backward_flops / s,
    ));
    let s = median_secs(1, reps, || {
        let (project, outer) = (
            Project { f: &b, p: &mut gd },
            Outer {
                s: &u,
                o: &mut db_t,
            },
        );
        lora_products(&dy, n_tok, RANK, project, outer);
        matmul_tn(&x, &gd, n_tok, &mut da_t, true);
    });
    rows.push((
        "LoRA backward, lora_products (dy read once)",
        backward_flops / s,
    ));
    assert!(
        gd.iter().chain(&db_t).chain(&da_t).all(|v| v.is_finite()),
        "LoRA backward: non-finite"
    );
    // Causal attention, forward and backward (GQA 14/2 heads of 64).
    let shape = AttnShape {
        n_tok,
        n_head: N_HEAD,
        n_head_kv: N_HEAD_KV,
        head_dim: HEAD_DIM,
    };
    let (q_dim, kv_dim) = (N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM);
    let q = values(n_tok * q_dim, 7);
    let k = values(n_tok * kv_dim, 8);
    let v = values(n_tok * kv_dim, 9);
    let mut out = vec![0f32; n_tok * q_dim];
    let mut lse = vec![0f32; N_HEAD * n_tok];
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    // Causal: half of the n_tok^2 scores; QK^T and PV forward, four products back.
    let attn_flops = 2.0 * (n_tok * n_tok * q_dim) as f64 / 2.0 * 2.0;
    let dout = values(n_tok * q_dim, 10);
    let (mut dq, mut dk, mut dv) = (
        vec![0f32; q.len()],
        vec![0f32; k.len()],
        vec![0f32; v.len()],
    );
    for (p, fwd_name, bwd_name) in [
        (Precision::F32, "attention forward", "attention backward"),
        if bf16 {
            (
                Precision::Bf16,
                "attention forward, bf16",
                "attention backward, bf16",
            )
        } else {
            (
                Precision::Bf16,
                "attention forward, bf16 (no AVX-512 BF16: f32)",
                "attention backward, bf16 (no AVX-512 BF16: f32)",
            )
        },
    ] {
        let s = median_secs(1, reps, || {
            attention_forward_in(p, &q, &k, &v, shape, scale, &mut out, &mut lse)
        });
        rows.push((fwd_name, attn_flops / s));
        let s = median_secs(1, reps, || {
            attention_backward_in(
                p, &q, &k, &v, &out, &lse, &dout, shape, scale, &mut dq, &mut dk, &mut dv,
            )
        });
        rows.push((bwd_name, 2.0 * attn_flops / s));
        assert!(
            out.iter()
                .chain(&dq)
                .chain(&dk)
                .chain(&dv)
                .all(|v| v.is_finite()),
            "{fwd_name}: non-finite output"
        );
    }

    if !bench {
        println!(
            "train_kernels: smoke run on {n_tok} tokens passed ({})",
            kernels().describe()
        );
        return;
    }
    println!(
        "Training-step kernels, Qwen2.5-0.5B shapes, T = {n_tok}, {} threads, median of {reps}",
        rayon::current_num_threads()
    );
    println!("Kernel set: {}\n", kernels().describe());
    println!("| kernel | GFLOP/s | ratio to f32 x W^T |");
    println!("|---|---:|---:|");
    for (name, flops) in rows {
        println!("| {name} | {:.1} | {:.2} |", flops / 1e9, flops / baseline);
    }
}
