//! Splitting a number of spots among keys in proportion to weights.

/// Splits `total` among the keys in proportion to their weights by largest
/// remainder (Hamilton): each key gets the floor of its exact share, and the
/// spots left over go to the largest fractional parts, ties to the earlier
/// key. The result always sums to `total` when some weight is positive (else
/// every key gets 0), and keeps the keys' order.
///
/// 10 spots, weights 40 and 60 → 4 and 6; 4 spots over 3 equal keys → 2, 1, 1;
/// 2 spots over 3 equal keys → 1, 1, 0 (the later keys go unrepresented).
pub fn apportion<K: Clone>(weights: &[(K, f64)], total: usize) -> Vec<(K, usize)> {
    let sum: f64 = weights.iter().map(|(_, w)| w.max(0.0)).sum();
    if sum <= 0.0 || total == 0 {
        return weights.iter().map(|(k, _)| (k.clone(), 0)).collect();
    }
    let exact: Vec<f64> = weights
        .iter()
        .map(|(_, w)| w.max(0.0) / sum * total as f64)
        .collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let assigned: usize = counts.iter().sum();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Stable sort: equal remainders keep the keys' order.
    order.sort_by(|&a, &b| {
        let ra = exact[a] - exact[a].floor();
        let rb = exact[b] - exact[b].floor();
        rb.partial_cmp(&ra).unwrap_or(std::cmp::Ordering::Equal)
    });
    for &i in order.iter().take(total.saturating_sub(assigned)) {
        counts[i] += 1;
    }
    weights
        .iter()
        .zip(counts)
        .map(|((k, _), c)| (k.clone(), c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::apportion;

    fn counts(weights: &[f64], total: usize) -> Vec<usize> {
        let w: Vec<(usize, f64)> = weights.iter().copied().enumerate().collect();
        apportion(&w, total).into_iter().map(|(_, c)| c).collect()
    }

    #[test]
    fn proportional_with_exact_shares() {
        assert_eq!(counts(&[40.0, 60.0], 10), vec![4, 6]);
    }

    #[test]
    fn leftovers_go_to_largest_remainders_and_sum_is_total() {
        assert_eq!(counts(&[1.0, 1.0, 1.0], 4), vec![2, 1, 1]);
        assert_eq!(counts(&[1.0, 1.0, 1.0], 2), vec![1, 1, 0]);
        assert_eq!(counts(&[5.0, 3.0, 2.0], 7), vec![4, 2, 1]);
        for total in 0..40 {
            let c = counts(&[7.0, 1.0, 13.0, 0.5, 2.0], total);
            assert_eq!(c.iter().sum::<usize>(), total);
        }
    }

    #[test]
    fn no_weight_no_spots() {
        assert_eq!(counts(&[0.0, 0.0], 5), vec![0, 0]);
        assert_eq!(counts(&[], 5), Vec::<usize>::new());
    }
}
