//! Losses (cross-entropy, MSE, CCC, the multi-task combination) and evaluation metrics.
