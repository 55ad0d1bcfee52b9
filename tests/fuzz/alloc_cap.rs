//! The global allocator of the fuzz binary: any single allocation over
//! 1 GiB while an input runs is a finding (a size taken from the file and
//! not checked), written out before the process stops.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub const CAP: usize = 1 << 30;

pub struct CappedAlloc;

thread_local! {
    /// The input being parsed on this thread (pointer, length), and its parser.
    static ARMED: Cell<Option<(*const u8, usize, &'static str)>> = const { Cell::new(None) };
}

/// Watches this thread's allocations while `input` runs.
pub fn arm(parser: &'static str, input: &[u8]) {
    ARMED.with(|a| a.set(Some((input.as_ptr(), input.len(), parser))));
}

pub fn disarm() {
    ARMED.with(|a| a.set(None));
}

/// Writes the input with plain system calls (no allocation) and aborts.
fn oversize(size: usize, input: *const u8, len: usize, parser: &str) -> ! {
    let path = c"target/fuzz-findings/oversize-allocation.bin";
    // SAFETY: plain POSIX calls on a NUL-terminated path and a live buffer.
    unsafe {
        libc::mkdir(c"target/fuzz-findings".as_ptr(), 0o755);
        let fd = libc::open(
            path.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
            0o644,
        );
        if fd >= 0 {
            libc::write(fd, input.cast(), len);
            libc::close(fd);
        }
        let text = b"fuzz: an input asked for more than 1 GiB at once; saved to target/fuzz-findings/oversize-allocation.bin (parser: ";
        libc::write(2, text.as_ptr().cast(), text.len());
        libc::write(2, parser.as_ptr().cast(), parser.len());
        let size_text = b", bytes: ";
        libc::write(2, size_text.as_ptr().cast(), size_text.len());
        let mut digits = [0u8; 20];
        let mut n = size;
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        libc::write(2, digits[i..].as_ptr().cast(), digits.len() - i);
        libc::write(2, b")\n".as_ptr().cast(), 2);
        libc::abort()
    }
}

// SAFETY: forwards to the system allocator; only refuses oversize requests.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > CAP {
            if let Some((p, n, parser)) = ARMED.with(Cell::get) {
                oversize(layout.size(), p, n, parser);
            }
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > CAP {
            if let Some((p, n, parser)) = ARMED.with(Cell::get) {
                oversize(layout.size(), p, n, parser);
            }
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > CAP {
            if let Some((p, n, parser)) = ARMED.with(Cell::get) {
                oversize(new_size, p, n, parser);
            }
        }
        System.realloc(ptr, layout, new_size)
    }
}
