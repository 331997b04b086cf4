/// jemalloc for the whole process, RocksDB's C++ included (its `malloc` replaces the C
/// library's): with glibc's allocator, a lookup that reads a block from disk spent a
/// tenth of the server's time consolidating and splitting free chunks, and resident
/// memory after the 10,000,000-digest benchmark's lookups was 736 MiB instead of 445.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    flagshare::cli::main()
}
