//! How the mesh stage spreads per-label work over the threads.

use rayon::prelude::*;

/// `work(n)` for every item `n` in `0..count`, in parallel, one item per task and the largest
/// (by `size`) first; the results in item order.
///
/// Labels differ in size by orders of magnitude. Rayon's default split would hand one thread a
/// contiguous run of them, and a large label met late becomes the tail of the whole step; started
/// first, the large ones run at once and the small ones fill the other threads around them.
pub(crate) fn largest_first<R: Send>(
    count: usize,
    size: impl Fn(usize) -> usize,
    work: impl Fn(usize) -> R + Sync + Send,
) -> Vec<R> {
    let mut order: Vec<usize> = (0..count).collect();
    order.sort_by_key(|&n| std::cmp::Reverse(size(n)));
    let mut done: Vec<(usize, R)> = order.into_par_iter().with_max_len(1).map(|n| (n, work(n))).collect();
    done.sort_by_key(|(n, _)| *n);
    done.into_iter().map(|(_, result)| result).collect()
}
