//! The tool-integrated agent: multi-turn generation with Python tool calls,
//! purified inline by CLEANER's Similarity-Aware Adaptive Rollback (SAAR).

pub mod similarity;
