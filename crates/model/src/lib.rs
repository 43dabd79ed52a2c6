//! ResNet backbone and the assembled 2Att-2Mt model, its config and checkpoint I/O.
