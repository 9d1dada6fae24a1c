//! The `kompose-dr` binary: a thin shell around the library's CLI.

fn main() -> std::process::ExitCode {
    kompose_dr::cli::main()
}
