//! The `bucketfs` command: parse, validate, mount; or `bucketfs status`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if bucketfs::cli::is_status_command(&argv) {
        let args = match bucketfs::cli::StatusArgs::try_parse_from(&argv[1..]) {
            Ok(args) => args,
            Err(e) => e.exit(),
        };
        return bucketfs::status::client::run(&args);
    }
    let args = match bucketfs::cli::parse_args(argv) {
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
