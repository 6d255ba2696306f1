//! The f64 reference the tiled kernels are tested against.

use super::AttnShape;

/// Scalar twin: full softmax per query in f64.
pub fn attention_forward_scalar(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttnShape,
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    shape.check(q, k, v, out, lse);
    let AttnShape {
        n_tok,
        n_head,
        n_head_kv,
        head_dim: hd,
    } = shape;
    let group = n_head / n_head_kv;
    for h in 0..n_head {
        let kvh = h / group;
        for i in 0..n_tok {
            let qi = &q[(i * n_head + h) * hd..][..hd];
            let s: Vec<f64> = (0..=i)
                .map(|j| {
                    let kj = &k[(j * n_head_kv + kvh) * hd..][..hd];
                    scale as f64
                        * qi.iter()
                            .zip(kj)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
            for d in 0..hd {
                let val: f64 = (0..=i)
                    .map(|j| (s[j] - mx).exp() / z * v[(j * n_head_kv + kvh) * hd + d] as f64)
                    .sum();
                out[(i * n_head + h) * hd + d] = val as f32;
            }
            lse[h * n_tok + i] = (mx + z.ln()) as f32;
        }
    }
}
