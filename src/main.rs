//! The `bucketfs` command: parse, validate, mount.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match bucketfs::cli::parse_args(std::env::args_os()) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    let config = match args.into_config() {
        Ok(config) => config,
        Err(msg) => {
            eprintln!("bucketfs: {msg}");
            return ExitCode::from(2);
        }
    };
    match bucketfs::daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bucketfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
