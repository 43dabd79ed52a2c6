//! Bidirectional LSTM/GRU aggregator over the layer-level feature sequence.
