//! Large buffers backed by transparent huge pages where Linux offers them (`madvise` mode): a
//! gigabyte-sized accumulator or volume then takes 2 MiB pages, which are faulted in and zeroed
//! in bulk and keep the TLB from thrashing; numpy does the same for its large arrays. Elsewhere
//! (or when the kernel refuses) these are ordinary allocations.

/// Buffers smaller than this are left alone: the allocator may serve them from the heap.
pub const HUGE_PAGE_THRESHOLD_BYTES: usize = 4 << 20;

/// A zero-filled `Vec` of `len` elements (allocated zeroed, so a large one is fresh, untouched
/// memory), advised to use huge pages before it is touched.
pub fn large_zeroed_vec<T: bytemuck::Zeroable>(len: usize) -> Vec<T> {
    let mut buffer: Vec<T> = bytemuck::zeroed_vec(len);
    advise_huge_pages(&mut buffer);
    buffer
}

/// An empty `Vec` with room for `capacity` elements, advised to use huge pages before it is filled.
pub fn large_vec_with_capacity<T>(capacity: usize) -> Vec<T> {
    let mut buffer = Vec::with_capacity(capacity);
    advise_huge_pages(&mut buffer);
    buffer
}

/// Advises the kernel to back `buffer`'s allocation with huge pages (Linux only; a no-op for
/// small buffers and elsewhere; a refusal is ignored: the buffer works either way).
fn advise_huge_pages<T>(buffer: &mut Vec<T>) {
    let bytes = buffer.capacity() * std::mem::size_of::<T>();
    if bytes < HUGE_PAGE_THRESHOLD_BYTES {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 2 << 20;
        let start = buffer.as_mut_ptr() as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let end = (start + bytes) & !(HUGE_PAGE - 1);
        if end > aligned {
            // SAFETY: [aligned, end) lies inside this Vec's own allocation, which stays alive and
            // in place for the call; MADV_HUGEPAGE changes only how the kernel backs the pages,
            // never their contents or the mapping's validity.
            unsafe {
                libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_ordinary_vectors() {
        let zeros: Vec<f32> = large_zeroed_vec(3 << 20);
        assert_eq!(zeros.len(), 3 << 20);
        assert!(zeros.iter().all(|v| *v == 0.0));
        let mut filled: Vec<u16> = large_vec_with_capacity(5 << 20);
        assert!(filled.is_empty() && filled.capacity() >= 5 << 20);
        filled.extend((0..5u32 << 20).map(|v| v as u16));
        assert_eq!(filled[12345], 12345);
        let small: Vec<u8> = large_zeroed_vec(10);
        assert_eq!(small, vec![0; 10]);
    }
}
