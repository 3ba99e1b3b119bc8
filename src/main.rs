//! The `bucketfs` command: parse, validate, mount; or `bucketfs status`, `bucketfs takeover`,
//! `bucketfs csi` (the Kubernetes node plugin), or print the completion script or the manual page.

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
    if bucketfs::cli::is_csi_command(&argv) {
        bucketfs::daemon::close_inherited();
        let args = match bucketfs::cli::CsiArgs::parse_argv(&argv) {
            Ok(args) => args,
            Err(e) => e.exit(),
        };
        return match bucketfs::csi::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bucketfs csi: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if bucketfs::cli::is_takeover_command(&argv) {
        bucketfs::daemon::close_inherited();
        let args = match bucketfs::cli::TakeoverArgs::try_parse_from(&argv[1..]) {
            Ok(args) => args,
            Err(e) => e.exit(),
        };
        return match bucketfs::daemon::take_over(&args.mountpoint, args.foreground) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bucketfs: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match bucketfs::cli::parse_args(argv) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    if let Some(shell) = args.completions {
        return print(&bucketfs::cli::completions(shell));
    }
    if args.man_page {
        return match bucketfs::cli::man_page() {
            Ok(page) => print(&page),
            Err(e) => {
                eprintln!("bucketfs: cannot render the manual page: {e}");
                ExitCode::FAILURE
            }
        };
    }
    bucketfs::daemon::close_inherited();
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

/// Writes `bytes` to stdout; a closed pipe (`| head`) is not an error worth a message.
fn print(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bucketfs: {e}");
            ExitCode::FAILURE
        }
    }
}
