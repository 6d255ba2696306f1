//! Numeric kernels for cleaner.
//!
//! This crate knows slices, dimensions and numeric formats, nothing else: no
//! model architectures, no GGUF files, no llama.cpp. Every optimized kernel
//! keeps a plain scalar twin that serves as its test oracle and fallback.

pub mod f16;
pub mod quant;
pub mod softmax;
