use super::backward::backward_on;
use super::forward::forward_on;
use super::tiles::Bf16Engine;
use super::*;
use crate::matmul::Precision;
use crate::testing::{max_rel_err, TestRng};

/// Relative to the largest |output|: f32 exp and accumulation over <= 200 keys.
pub const ATTENTION_TOL: f64 = 2e-5;
/// bf16 tiles against the f64 twin on the same rounded inputs: each
/// probability rounded to bf16 (2^-9 relative), relative to the largest
/// |output|.
const BF16_ATTENTION_TOL: f64 = 5e-3;
/// bf16 tiles against unrounded inputs: scores move by ~2^-9 of |q| |k|.
const BF16_INPUT_TOL: f64 = 2e-2;
/// bf16 gradients against f32 ones, relative L2.
const BF16_GRAD_TOL: f64 = 2e-2;

/// A shape and random q, k (entries within +-`qk`) and v (within +-1).
fn random_case(
    rng: &mut TestRng,
    (n_tok, n_head, n_head_kv, head_dim): (usize, usize, usize, usize),
    qk: f32,
) -> (AttnShape, Vec<f32>, Vec<f32>, Vec<f32>) {
    let shape = AttnShape {
        n_tok,
        n_head,
        n_head_kv,
        head_dim,
    };
    let q = rng.vec(n_tok * n_head * head_dim, qk);
    let k = rng.vec(n_tok * n_head_kv * head_dim, qk);
    let v = rng.vec(n_tok * n_head_kv * head_dim, 1.0);
    (shape, q, k, v)
}

/// `[dq, dk, dv]` of `L = sum(dout * out)`: forward, then backward, in `p`.
fn grads(
    p: Precision,
    shape: AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    scale: f32,
) -> [Vec<f32>; 3] {
    let engine = (p.effective() == Precision::Bf16).then(Bf16Engine::for_cpu);
    grads_on(engine, shape, q, k, v, dout, scale)
}

/// [`grads`] with bf16 products on `engine`, or f32 (`None`).
fn grads_on(
    engine: Option<Bf16Engine>,
    shape: AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    scale: f32,
) -> [Vec<f32>; 3] {
    let (mut o, mut lse) = (vec![0f32; q.len()], vec![0f32; shape.n_head * shape.n_tok]);
    forward_on(engine, q, k, v, shape, scale, &mut o, &mut lse);
    let (mut dq, mut dk, mut dv) = (
        vec![0f32; q.len()],
        vec![0f32; k.len()],
        vec![0f32; v.len()],
    );
    backward_on(
        engine, q, k, v, &o, &lse, dout, shape, scale, &mut dq, &mut dk, &mut dv,
    );
    [dq, dk, dv]
}

/// The engines the bf16 tests run: this CPU's, and the AMX tiles' software
/// model (the tile path's padding and blocking on every CPU with the bf16
/// packing; the hardware tiles where the kernel set picks them).
fn bf16_engines() -> Vec<Bf16Engine> {
    let mut engines = vec![Bf16Engine::for_cpu(), Bf16Engine::AmxModel];
    engines.dedup();
    engines
}

/// `L = sum(dout * out)` through the f64 twin: the finite differences' oracle.
fn scalar_loss(shape: AttnShape, scale: f32, dout: &[f32], q: &[f32], k: &[f32], v: &[f32]) -> f64 {
    let (mut o, mut l) = (vec![0f32; q.len()], vec![0f32; shape.n_head * shape.n_tok]);
    attention_forward_scalar(q, k, v, shape, scale, &mut o, &mut l);
    o.iter().zip(dout).map(|(a, b)| *a as f64 * *b as f64).sum()
}

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
        let (shape, q, k, v) = random_case(&mut rng, (n_tok, n_head, n_head_kv, head_dim), 2.0);
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
        let (shape, q, k, v) = random_case(&mut rng, (n_tok, n_head, n_head_kv, head_dim), 1.5);
        let dout = rng.vec(q.len(), 1.0);
        let scale = 0.7;
        let [dq, dk, dv] = grads(Precision::F32, shape, &q, &k, &v, &dout, scale);
        let loss = |q: &[f32], k: &[f32], v: &[f32]| scalar_loss(shape, scale, &dout, q, k, v);
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
        let (shape, q, k, v) = random_case(&mut rng, (n_tok, n_head, n_head_kv, head_dim), 1.5);
        let dout = rng.vec(q.len(), 1.0);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let [dq, dk, dv] = grads(Precision::F32, shape, &q, &k, &v, &dout, scale);
        let loss = |q: &[f32], k: &[f32], v: &[f32]| scalar_loss(shape, scale, &dout, q, k, v);
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

/// Rounds every value to bf16 (what the bf16 tiles do to q, k and v).
fn bf16_rounded(x: &[f32]) -> Vec<f32> {
    use crate::matmul::{from_bf16, to_bf16};
    x.iter().map(|&v| from_bf16(to_bf16(v))).collect()
}

/// bf16 tiles: against the f64 twin run on the same bf16-rounded q, k, v,
/// what remains is the probabilities' rounding to bf16 (2^-9 of each) and
/// f32 sums; against the unrounded inputs, the inputs' rounding too.
#[test]
fn bf16_forward_matches_scalar_twin_on_rounded_inputs() {
    if Precision::Bf16.effective() != Precision::Bf16 {
        eprintln!("no AVX-512 BF16 on this CPU: bf16 runs f32, covered above");
        return;
    }
    let mut rng = TestRng(14);
    for &(n_tok, n_head, n_head_kv, head_dim) in &[
        (1, 1, 1, 4),
        (77, 4, 2, 16),
        (300, 6, 2, 64),
        (130, 2, 1, 80),
    ] {
        let (shape, q, k, v) = random_case(&mut rng, (n_tok, n_head, n_head_kv, head_dim), 2.0);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (mut o_ref, mut lse_ref) = (vec![0f32; q.len()], vec![0f32; n_head * n_tok]);
        let (qr, kr, vr) = (bf16_rounded(&q), bf16_rounded(&k), bf16_rounded(&v));
        attention_forward_scalar(&qr, &kr, &vr, shape, scale, &mut o_ref, &mut lse_ref);
        let mut o_unrounded = vec![0f32; q.len()];
        attention_forward_scalar(
            &q,
            &k,
            &v,
            shape,
            scale,
            &mut o_unrounded,
            &mut vec![0f32; lse_ref.len()],
        );
        for engine in bf16_engines() {
            let mut o = vec![0f32; q.len()];
            let mut lse = vec![0f32; n_head * n_tok];
            forward_on(Some(engine), &q, &k, &v, shape, scale, &mut o, &mut lse);
            let (eo, el) = (max_rel_err(&o, &o_ref), max_rel_err(&lse, &lse_ref));
            eprintln!("{engine:?} {shape:?}: rounded inputs: out {eo:.2e} lse {el:.2e}");
            assert!(eo <= BF16_ATTENTION_TOL, "{engine:?} {shape:?}: out {eo}");
            assert!(el <= ATTENTION_TOL, "{engine:?} {shape:?}: lse {el}");
            let eo = max_rel_err(&o, &o_unrounded);
            eprintln!("{engine:?} {shape:?}: unrounded: out {eo:.2e}");
            assert!(
                eo <= BF16_INPUT_TOL,
                "{engine:?} {shape:?}: out vs unrounded {eo}"
            );
        }
    }
}

/// Relative L2 distance `|a - b| / |b|`.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// The bf16 backward against the f32 one (itself checked against finite
/// differences above), gradient by gradient in relative L2: within bf16's
/// rounding of the operands and of the probability tiles, and wrong
/// anywhere (a tile, a head, a run) it would be far off.
#[test]
fn bf16_backward_matches_f32_backward() {
    if Precision::Bf16.effective() != Precision::Bf16 {
        eprintln!("no AVX-512 BF16 on this CPU: bf16 runs f32, covered above");
        return;
    }
    let mut rng = TestRng(15);
    for &(n_tok, n_head, n_head_kv, head_dim) in &[
        (520, 2, 1, 8),
        (333, 6, 3, 16),
        (97, 2, 2, 64),
        (70, 2, 1, 80),
    ] {
        let (shape, q, k, v) = random_case(&mut rng, (n_tok, n_head, n_head_kv, head_dim), 1.5);
        let dout = rng.vec(q.len(), 1.0);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let f = grads(Precision::F32, shape, &q, &k, &v, &dout, scale);
        for engine in bf16_engines() {
            let bf = grads_on(Some(engine), shape, &q, &k, &v, &dout, scale);
            for (name, a, b) in [
                ("dq", &bf[0], &f[0]),
                ("dk", &bf[1], &f[1]),
                ("dv", &bf[2], &f[2]),
            ] {
                let err = rel_l2(a, b);
                eprintln!("{engine:?} {shape:?} {name}: {err:.2e}");
                assert!(
                    err <= BF16_GRAD_TOL,
                    "{engine:?} {shape:?} {name}: relative L2 {err}"
                );
            }
        }
    }
}
