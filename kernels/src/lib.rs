//! Numeric kernels for cleaner.
//!
//! This crate knows slices, dimensions and numeric formats, nothing else: no
//! model architectures, no GGUF files, no llama.cpp. Every optimized kernel
//! keeps a plain scalar twin that serves as its test oracle and fallback.
//! Shapes are written `[n_tok, n_embd]` style (row-major, last index fastest).

#![warn(missing_docs)]

pub mod activation;
pub mod attention;
pub mod cpu;
pub mod f16;
pub mod logits;
pub mod matmul;
pub mod norm;
pub mod profile;
pub mod quant;
pub mod rng;
pub mod rope;
pub mod softmax;

mod parallel;
#[cfg(test)]
mod testing;
