//! Group-normalized advantages (GRPO): within each group of rollouts of one
//! problem, `(r - mean) / (std + eps)` with the unbiased standard deviation.
//! A group whose rewards are all equal carries no signal (`None`: GRPO
//! trains it with advantage 0, so its tokens still count in the token-mean).

/// Added to the standard deviation.
pub const EPS: f32 = 1e-6;

/// Advantages per rollout (`None`: its group is degenerate) and the count
/// of degenerate groups.
#[derive(Clone, Debug, PartialEq)]
pub struct Advantages {
    /// One per rollout, in input order.
    pub values: Vec<Option<f32>>,
    /// Groups whose rewards were all equal.
    pub degenerate_groups: usize,
}

/// `rewards` holds consecutive groups of `group` rollouts (the last group
/// may be shorter).
pub fn group_advantages(rewards: &[f32], group: usize) -> Advantages {
    let mut out = Advantages {
        values: Vec::with_capacity(rewards.len()),
        degenerate_groups: 0,
    };
    for g in rewards.chunks(group.max(1)) {
        let n = g.len() as f64;
        let mean = g.iter().map(|&r| r as f64).sum::<f64>() / n;
        let var = if g.len() > 1 {
            g.iter().map(|&r| (r as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        if var == 0.0 {
            out.degenerate_groups += 1;
            out.values.extend(std::iter::repeat_n(None, g.len()));
            continue;
        }
        let std = var.sqrt();
        out.values.extend(
            g.iter()
                .map(|&r| Some(((r as f64 - mean) / (std + EPS as f64)) as f32)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_within_groups_and_skips_degenerate_ones() {
        let a = group_advantages(&[1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0], 4);
        assert_eq!(a.degenerate_groups, 1);
        // Group 1: mean -0.5, unbiased std 1.0.
        let v: Vec<f32> = a.values[..4].iter().map(|x| x.unwrap()).collect();
        for (got, want) in v.iter().zip([1.5f32, -0.5, -0.5, -0.5]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        assert!(a.values[4..].iter().all(Option::is_none));
        // Advantages of a group sum to zero.
        assert!(v.iter().sum::<f32>().abs() < 1e-5);
    }
}
