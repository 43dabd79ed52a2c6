//! Custom candle ops for the hot core of 2Att-2Mt (CPU implementations, CUDA behind `cuda`).
//!
//! Empty for now: the plain candle ops serve until the CPU-speed and CUDA work lands here.
