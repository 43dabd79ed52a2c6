//! AffectNet's expression codes, names and label conventions, shared by every reader.

/// AffectNet expression codes 0..=10. Codes 0..=7 are the 8 trainable classes.
pub const EXPRESSION_NAMES: [&str; 11] = [
    "Neutral",
    "Happy",
    "Sad",
    "Surprise",
    "Fear",
    "Disgust",
    "Anger",
    "Contempt",
    "None",
    "Uncertain",
    "No-Face",
];

/// Number of trainable classes in the full AffectNet setting (codes 0..=7).
pub const NUM_CLASSES: usize = 8;

/// AffectNet's marker for "no valence/arousal value" (codes 9 and 10).
pub const NO_VA: f32 = -2.0;

/// The class names for `num_classes` = 8 (all) or 7 (Contempt dropped).
pub fn class_names(num_classes: usize) -> &'static [&'static str] {
    &EXPRESSION_NAMES[..num_classes.min(NUM_CLASSES)]
}

/// The training label of an AffectNet code for `num_classes` (8 or 7): `None` when the code is
/// not a trainable class (8-10, or Contempt in the 7-class setting).
pub fn class_of_code(code: i64, num_classes: usize) -> Option<i64> {
    (0..num_classes as i64).contains(&code).then_some(code)
}

/// Maps a folder or label name (FER-2013 style, any case) to an AffectNet code.
pub fn code_of_name(name: &str) -> Option<i64> {
    let n = name.trim().to_ascii_lowercase();
    let code = match n.as_str() {
        "neutral" | "neutrality" => 0,
        "happy" | "happiness" | "joy" => 1,
        "sad" | "sadness" => 2,
        "surprise" | "surprised" => 3,
        "fear" | "afraid" | "fearful" | "scared" => 4,
        "disgust" | "disgusted" => 5,
        "anger" | "angry" => 6,
        "contempt" => 7,
        _ => return None,
    };
    Some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_codes() {
        assert_eq!(code_of_name("Angry"), Some(6));
        assert_eq!(code_of_name("anger"), Some(6));
        assert_eq!(code_of_name("HAPPY"), Some(1));
        assert_eq!(code_of_name("sloth"), None);
        for (code, name) in EXPRESSION_NAMES.iter().enumerate().take(8) {
            assert_eq!(code_of_name(name), Some(code as i64));
        }
    }

    #[test]
    fn codes_beyond_classes_are_dropped() {
        assert_eq!(class_of_code(7, 8), Some(7));
        assert_eq!(class_of_code(7, 7), None);
        assert_eq!(class_of_code(8, 8), None);
        assert_eq!(class_of_code(-1, 8), None);
        assert_eq!(class_names(7).len(), 7);
    }
}
