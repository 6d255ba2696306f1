use super::*;

fn sample() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .set("llama.block_count", Value::U32(2))
        .set(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        );
    w.add_f32("a", &[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    w.add_f32("b", &[3], &[9.0, 10.0, 11.0]);
    w
}

#[test]
fn round_trip() {
    let f = GgufFile::from_bytes(sample().to_bytes()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get_u64("llama.block_count").unwrap(), 2);
    let a = f.tensor_bytes("a").unwrap();
    assert_eq!(f32::from_le_bytes(a[28..32].try_into().unwrap()), 8.0);
    assert_eq!(f.tensor("b").unwrap().n_elements(), 3);
    assert!(matches!(
        f.get_str("llama.block_count").unwrap_err().kind,
        GgufErrorKind::WrongType { .. }
    ));
    assert!(matches!(
        f.get_str("nope").unwrap_err().kind,
        GgufErrorKind::MissingKey(_)
    ));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample().to_bytes();
    let header_end = GgufFile::from_bytes(bytes.clone()).unwrap().data_offset() as usize;
    // Any cut inside the header or the data must be reported, never panic.
    for cut in 0..bytes.len() - 1 {
        let r = GgufFile::from_bytes(bytes[..cut].to_vec());
        if cut < header_end + 44 {
            assert!(r.is_err(), "cut at {cut} of {} accepted", bytes.len());
        }
    }
}

#[test]
fn hostile_headers() {
    let mut bad = b"GGML".to_vec();
    bad.extend_from_slice(&[0; 20]);
    assert!(matches!(
        GgufFile::from_bytes(bad).unwrap_err().kind,
        GgufErrorKind::BadMagic { .. }
    ));

    let mut v9 = sample().to_bytes();
    v9[4] = 9;
    assert!(matches!(
        GgufFile::from_bytes(v9).unwrap_err().kind,
        GgufErrorKind::UnsupportedVersion(9)
    ));

    let mut huge = sample().to_bytes();
    huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes()); // metadata count
    assert!(matches!(
        GgufFile::from_bytes(huge).unwrap_err().kind,
        GgufErrorKind::CountTooLarge { .. }
    ));
}
