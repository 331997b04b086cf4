fn main() -> std::process::ExitCode {
    flagshare::cli::main()
}
