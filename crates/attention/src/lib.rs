//! First-level (position) and second-level (layer self-) attention blocks of 2Att-2Mt.
