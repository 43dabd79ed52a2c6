//! Spotting a collapsed classifier on the validation split: accuracy no better than always
//! answering the most frequent class, or one class taking almost every prediction.

/// Share of the predictions above which one class "takes almost all" of them.
pub const ALMOST_ALL: f64 = 0.9;

/// A warning (what was seen, with the predicted-class histogram) when the confusion matrix
/// (`[K][K]`, rows = truth, columns = prediction) looks collapsed; `None` otherwise.
///
/// A class that takes most predictions because it holds most of the truth is not a collapse:
/// the share test only fires when the predicted share exceeds the class's true share.
pub fn check(cm: &[Vec<u64>], classes: &[String]) -> Option<String> {
    let total: u64 = cm.iter().flatten().sum();
    if total == 0 {
        return None;
    }
    let n = total as f64;
    let truth: Vec<u64> = cm.iter().map(|r| r.iter().sum()).collect();
    let predicted = crate::report::predicted_counts(cm);
    let correct: u64 = (0..cm.len()).map(|i| cm[i][i]).sum();
    let accuracy = correct as f64 / n;
    let majority = *truth.iter().max().unwrap_or(&0) as f64 / n;
    let (top, &top_count) = predicted
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| **c)
        .expect("a confusion matrix has classes");
    let share = top_count as f64 / n;
    let mut why = vec![];
    if accuracy <= majority {
        why.push(format!(
            "accuracy {accuracy:.4} is at or below the majority-class rate {majority:.4}"
        ));
    }
    if share >= ALMOST_ALL && share > truth[top] as f64 / n {
        why.push(format!(
            "{} takes {:.1} % of the predictions ({:.1} % of the truth)",
            name(classes, top),
            100.0 * share,
            100.0 * truth[top] as f64 / n
        ));
    }
    if why.is_empty() {
        return None;
    }
    Some(format!(
        "val predictions look collapsed: {}; predicted per class: {}",
        why.join("; "),
        histogram(&predicted, classes)
    ))
}

fn name(classes: &[String], k: usize) -> String {
    classes
        .get(k)
        .cloned()
        .unwrap_or_else(|| format!("class {k}"))
}

/// `Neutral 12, Happy 0, ...`.
pub fn histogram(counts: &[u64], classes: &[String]) -> String {
    counts
        .iter()
        .enumerate()
        .map(|(k, c)| format!("{} {c}", name(classes, k)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["a", "b", "c"].map(String::from).to_vec()
    }

    #[test]
    fn everything_called_the_rarest_class_is_a_collapse() {
        // Truth 50/30/20, every face called c: accuracy 0.2 <= 0.5, c takes 100 %.
        let cm = vec![vec![0, 0, 50], vec![0, 0, 30], vec![0, 0, 20]];
        let w = check(&cm, &names()).unwrap();
        assert!(w.contains("accuracy 0.2000") && w.contains("0.5000"), "{w}");
        assert!(w.contains("c takes 100.0 %"), "{w}");
        assert!(w.contains("predicted per class: a 0, b 0, c 100"), "{w}");
    }

    #[test]
    fn the_majority_class_alone_is_at_the_majority_rate() {
        let cm = vec![vec![50, 0, 0], vec![30, 0, 0], vec![20, 0, 0]];
        let w = check(&cm, &names()).unwrap();
        assert!(w.contains("at or below the majority-class rate"), "{w}");
    }

    #[test]
    fn a_learning_model_is_not_flagged() {
        let cm = vec![vec![40, 5, 5], vec![5, 20, 5], vec![5, 5, 10]];
        assert_eq!(check(&cm, &names()), None);
        // 95 % of the truth is one class and the model says it 94 % of the time: no collapse.
        let cm = vec![vec![930, 0, 20], vec![5, 20, 0], vec![5, 0, 20]];
        assert_eq!(check(&cm, &names()), None);
        assert_eq!(check(&[vec![0, 0], vec![0, 0]], &names()), None);
    }
}
