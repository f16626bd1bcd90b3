//! The `edge-filter` binary; the command line is in `cli.rs`.
fn main() -> std::process::ExitCode {
    edge_filter::cli::main()
}
