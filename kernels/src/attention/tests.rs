use super::*;
use crate::testing::{max_rel_err, TestRng};

/// Relative to the largest |output|: f32 exp and accumulation over <= 200 keys.
pub const ATTENTION_TOL: f64 = 2e-5;

#[test]
fn matches_scalar_twin_with_gqa_and_ragged_tiles() {
    let mut rng = TestRng(11);
    for &(n_tok, n_head, n_head_kv, head_dim) in &[
        (1, 1, 1, 4),
        (5, 2, 1, 8),
        (33, 4, 2, 16),
        (130, 6, 2, 64),
        (200, 3, 3, 20),
    ] {
        let shape = AttnShape {
            n_tok,
            n_head,
            n_head_kv,
            head_dim,
        };
        let q = rng.vec(n_tok * n_head * head_dim, 2.0);
        let k = rng.vec(n_tok * n_head_kv * head_dim, 2.0);
        let v = rng.vec(n_tok * n_head_kv * head_dim, 1.0);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (mut o, mut o_ref) = (vec![0f32; q.len()], vec![0f32; q.len()]);
        let (mut lse, mut lse_ref) = (vec![0f32; n_head * n_tok], vec![0f32; n_head * n_tok]);
        attention_forward(&q, &k, &v, shape, scale, &mut o, &mut lse);
        attention_forward_scalar(&q, &k, &v, shape, scale, &mut o_ref, &mut lse_ref);
        assert!(
            max_rel_err(&o, &o_ref) <= ATTENTION_TOL,
            "{shape:?}: out {}",
            max_rel_err(&o, &o_ref)
        );
        assert!(
            max_rel_err(&lse, &lse_ref) <= ATTENTION_TOL,
            "{shape:?}: lse"
        );
    }
}

/// Backward vs central finite differences of `L = sum(dout * out)` in f64.
#[test]
fn backward_matches_finite_differences() {
    let mut rng = TestRng(12);
    for &(n_tok, n_head, n_head_kv, head_dim) in &[(5, 2, 1, 4), (70, 2, 2, 3)] {
        let shape = AttnShape {
            n_tok,
            n_head,
            n_head_kv,
            head_dim,
        };
        let q = rng.vec(n_tok * n_head * head_dim, 1.5);
        let k = rng.vec(n_tok * n_head_kv * head_dim, 1.5);
        let v = rng.vec(n_tok * n_head_kv * head_dim, 1.0);
        let dout = rng.vec(q.len(), 1.0);
        let scale = 0.7;
        let (mut o, mut lse) = (vec![0f32; q.len()], vec![0f32; n_head * n_tok]);
        attention_forward(&q, &k, &v, shape, scale, &mut o, &mut lse);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.len()],
            vec![0f32; k.len()],
            vec![0f32; v.len()],
        );
        attention_backward(
            &q, &k, &v, &o, &lse, &dout, shape, scale, &mut dq, &mut dk, &mut dv,
        );
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            let (mut o, mut l) = (vec![0f32; q.len()], vec![0f32; n_head * n_tok]);
            attention_forward_scalar(q, k, v, shape, scale, &mut o, &mut l);
            o.iter()
                .zip(&dout)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        let h = 1e-3f32;
        let fd = |which: usize, i: usize| -> f32 {
            let mut t = [q.clone(), k.clone(), v.clone()];
            t[which][i] += h;
            let p = loss(&t[0], &t[1], &t[2]);
            t[which][i] -= 2.0 * h;
            let m = loss(&t[0], &t[1], &t[2]);
            ((p - m) / (2.0 * h as f64)) as f32
        };
        let fd_q: Vec<f32> = (0..q.len()).map(|i| fd(0, i)).collect();
        let fd_k: Vec<f32> = (0..k.len()).map(|i| fd(1, i)).collect();
        let fd_v: Vec<f32> = (0..v.len()).map(|i| fd(2, i)).collect();
        for (name, got, want) in [("dq", &dq, &fd_q), ("dk", &dk, &fd_k), ("dv", &dv, &fd_v)] {
            let err = max_rel_err(got, want);
            assert!(err <= 2e-3, "{shape:?} {name}: {err}");
        }
    }
}

/// Long sequences split each head into several runs of query blocks (see
/// `run_bounds`): the backward against the directional derivative of the
/// f64 forward, `d/de L(x + e u)` by central differences, for a random
/// direction `u` in each of q, k and v.
#[test]
fn backward_over_several_runs_matches_directional_derivatives() {
    let mut rng = TestRng(13);
    for &(n_tok, n_head, n_head_kv, head_dim) in &[(520, 2, 1, 8), (333, 6, 3, 16)] {
        let shape = AttnShape {
            n_tok,
            n_head,
            n_head_kv,
            head_dim,
        };
        let q = rng.vec(n_tok * n_head * head_dim, 1.5);
        let k = rng.vec(n_tok * n_head_kv * head_dim, 1.5);
        let v = rng.vec(n_tok * n_head_kv * head_dim, 1.0);
        let dout = rng.vec(q.len(), 1.0);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (mut o, mut lse) = (vec![0f32; q.len()], vec![0f32; n_head * n_tok]);
        attention_forward(&q, &k, &v, shape, scale, &mut o, &mut lse);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.len()],
            vec![0f32; k.len()],
            vec![0f32; v.len()],
        );
        attention_backward(
            &q, &k, &v, &o, &lse, &dout, shape, scale, &mut dq, &mut dk, &mut dv,
        );
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            let (mut o, mut l) = (vec![0f32; q.len()], vec![0f32; n_head * n_tok]);
            attention_forward_scalar(q, k, v, shape, scale, &mut o, &mut l);
            o.iter()
                .zip(&dout)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        for (which, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
            let mut t = [q.clone(), k.clone(), v.clone()];
            let dir = rng.vec(t[which].len(), 1.0);
            let e = 1e-2f32;
            t[which].iter_mut().zip(&dir).for_each(|(x, u)| *x += e * u);
            let plus = loss(&t[0], &t[1], &t[2]);
            t[which]
                .iter_mut()
                .zip(&dir)
                .for_each(|(x, u)| *x -= 2.0 * e * u);
            let minus = loss(&t[0], &t[1], &t[2]);
            let fd = (plus - minus) / (2.0 * e as f64);
            let analytic: f64 = grad
                .iter()
                .zip(&dir)
                .map(|(g, u)| *g as f64 * *u as f64)
                .sum();
            // Relative: f32 accumulation over hundreds of keys, and the
            // O(e^2) truncation of the difference (a 1 % error in any one
            // gradient term shows up as ~1 %).
            let err = (analytic - fd).abs() / fd.abs().max(1e-6);
            assert!(
                err <= 1e-3,
                "{shape:?} input {which}: {analytic} vs {fd} (err {err})"
            );
        }
    }
}

#[test]
fn first_token_attends_only_to_itself() {
    let shape = AttnShape {
        n_tok: 3,
        n_head: 1,
        n_head_kv: 1,
        head_dim: 2,
    };
    let q = vec![1.0; 6];
    let k = vec![0.5; 6];
    let v = vec![1.0, 2.0, 30.0, 40.0, 500.0, 600.0];
    let (mut o, mut lse) = (vec![0f32; 6], vec![0f32; 3]);
    attention_forward(&q, &k, &v, shape, 1.0, &mut o, &mut lse);
    assert_eq!(&o[..2], &[1.0, 2.0]);
    // Equal scores: the second token averages the first two values.
    assert!((o[2] - 15.5).abs() < 1e-5 && (o[3] - 21.0).abs() < 1e-5);
}
