use std::process::ExitCode;

fn main() -> ExitCode {
    edgeforge::run()
}
