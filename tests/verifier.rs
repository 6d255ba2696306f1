//! The math verifier against `math-verify` (Hugging Face, sympy-based) on
//! committed cases: real answers the model boxed, real reference answers of
//! GSM8K/AIME24/AMC23 in the forms models write, and LaTeX forms
//! (tests/data/gen_verifier_cases.py). Every case must agree with its label.

use cleaner::tasks::math_equal;

#[test]
fn agrees_with_math_verify_on_committed_cases() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/verifier_cases.jsonl"
    ))
    .expect("tests/data/verifier_cases.jsonl");
    let mut n = 0;
    let mut wrong = Vec::new();
    for line in text.lines() {
        let case: serde_json::Value = serde_json::from_str(line).expect("case is JSON");
        let (pred, truth) = (
            case["pred"].as_str().unwrap(),
            case["truth"].as_str().unwrap(),
        );
        let expected = case["expected"].as_bool().unwrap();
        n += 1;
        if math_equal(pred, truth) != expected {
            wrong.push(format!(
                "{} {pred:?} vs {truth:?}: expected {expected}",
                case["source"]
            ));
        }
    }
    assert!(n >= 1000, "only {n} cases");
    assert!(
        wrong.is_empty(),
        "{} of {n} cases disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn strict_match_is_normalized_text_equality() {
    use cleaner::tasks::strict_equal;
    // (pred, truth, strict, math)
    for (pred, truth, strict, math) in [
        ("\\dfrac{1}{2}", "\\frac{1}{2}", true, true),
        ("$18$", "18", true, true),
        ("1,000", "1000", true, true),
        ("0.5", "\\frac{1}{2}", false, true),
        ("2\\sqrt{3}", "\\sqrt{12}", false, true),
        ("18", "19", false, false),
        ("", "", false, false),
    ] {
        assert_eq!(
            strict_equal(pred, truth),
            strict,
            "strict {pred:?} vs {truth:?}"
        );
        assert_eq!(math_equal(pred, truth), math, "math {pred:?} vs {truth:?}");
    }
}
