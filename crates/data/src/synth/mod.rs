//! Procedural synthetic faces in the AffectNet layout (in progress).
