//! `bucketfs status [MOUNTPOINT] [--json] [--watch] [--wait]`: asks the status socket of each
//! bucketfs mount (or of the one given) what it is doing, and shows it: progress bars on a
//! terminal (indicatif), plain lines otherwise, or the daemon's JSON.
//!
//! Non-obvious problems:
//! 1. The mount is found in /proc/mounts (type `fuse.bucketfs`) without touching the mount
//!    itself: a mount that hangs must not hang `status`.
//! 2. A mount made by another user has its socket in that user's runtime directory
//!    (`/run/user/UID/bucketfs`); connecting to it fails with "permission denied" unless the
//!    caller is that user (or root), and `status` says so instead of showing nothing.
//! 3. `--wait` reports only the commits that failed after it started (failures carry a
//!    sequence number), and waits until no upload is in flight and no open file has
//!    uncommitted changes.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{
    HumanBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle,
};
use serde_json::Value;

use super::{mount_path, socket_dir, socket_path};
use crate::cli::StatusArgs;

/// How long one answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often `--wait` asks again.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// One bucketfs mount found in /proc/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount point.
    pub path: PathBuf,
    /// The uid of the user who mounted it.
    pub uid: u32,
}

/// The bucketfs mounts in a /proc/mounts text.
pub fn bucketfs_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (path, fstype, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            if *fstype != "fuse.bucketfs" {
                return None;
            }
            let uid = options
                .split(',')
                .find_map(|o| o.strip_prefix("user_id="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            Some(MountEntry {
                path: PathBuf::from(unescape_mount_path(path)),
                uid,
            })
        })
        .collect()
}

/// /proc/mounts writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = |b: &u8| (b'0'..=b'7').contains(b);
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(octal) {
            let v = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the socket of `mount` is, seen from this user.
fn socket_of(mount: &MountEntry) -> PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    let runtime = if mount.uid == me {
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
    } else {
        None
    }
    .or_else(|| {
        let dir = PathBuf::from(format!("/run/user/{}", mount.uid));
        dir.is_dir().then_some(dir)
    });
    socket_path(&socket_dir(mount.uid, runtime.as_deref()), &mount.path)
}

/// Asks the daemon of `mount` for its status.
fn ask(mount: &MountEntry) -> Result<Value, String> {
    let path = socket_of(mount);
    let where_ = mount.path.display();
    let mut stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "{where_}: permission denied (the mount belongs to uid {}; ask as that user or root)",
            mount.uid
        ),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
            "{where_}: its daemon has no status socket at {} (a bucketfs older than `status`, or it is gone)",
            path.display()
        ),
        _ => format!("{where_}: cannot reach its daemon at {}: {e}", path.display()),
    })?;
    let io = |e: std::io::Error| format!("{where_}: {e}");
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    stream.write_all(b"status\n").map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(io)?;
    let value: Value =
        serde_json::from_str(&line).map_err(|e| format!("{where_}: unreadable answer: {e}"))?;
    if let Some(err) = value.get("error").and_then(Value::as_str) {
        return Err(format!("{where_}: {err}"));
    }
    Ok(value)
}

/// The mounts `status` is about: the one given, or all.
fn chosen(args: &StatusArgs) -> Result<Vec<MountEntry>, String> {
    let text = std::fs::read_to_string("/proc/mounts")
        .map_err(|e| format!("cannot read /proc/mounts: {e}"))?;
    let mounts = bucketfs_mounts(&text);
    let Some(given) = &args.mountpoint else {
        return Ok(mounts);
    };
    let wanted = mount_path(given);
    mounts
        .into_iter()
        .find(|m| m.path == wanted)
        .map(|m| vec![m])
        .ok_or_else(|| format!("{}: not a bucketfs mount", given.display()))
}

/// Runs the `status` command.
pub fn run(args: &StatusArgs) -> ExitCode {
    let mounts = match chosen(args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("bucketfs status: {e}");
            return ExitCode::from(2);
        }
    };
    if mounts.is_empty() {
        if args.json {
            println!("{}", serde_json::json!({ "mounts": [] }));
        } else {
            println!("no bucketfs mounts");
        }
        return ExitCode::SUCCESS;
    }
    if args.wait {
        return wait(&mounts, args);
    }
    if args.watch {
        return watch(&mounts, args);
    }
    let (answers, failed) = ask_all(&mounts);
    if args.json {
        let out = match (&args.mountpoint, answers.first()) {
            (Some(_), Some(one)) => one.clone(),
            _ => serde_json::json!({ "mounts": answers }),
        };
        println!("{out}");
    } else {
        let tty = std::io::stdout().is_terminal();
        for a in &answers {
            show(a, tty);
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Every mount's answer; true in `.1` when one could not be asked (said on stderr).
fn ask_all(mounts: &[MountEntry]) -> (Vec<Value>, bool) {
    let mut failed = false;
    let answers = mounts
        .iter()
        .filter_map(|m| match ask(m) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("bucketfs status: {e}");
                failed = true;
                None
            }
        })
        .collect();
    (answers, failed)
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// One upload's line after its bar: parts, rate, ETA.
fn upload_detail(u: &Value) -> String {
    let sent = num(u, "bytes_sent");
    let goal = u.get("bytes_total").and_then(Value::as_u64);
    let seconds = u.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
    let rate = if seconds > 0.0 {
        sent as f64 / seconds
    } else {
        0.0
    };
    let mut s = format!(
        "{} parts, {}/s",
        num(u, "parts_done"),
        HumanBytes(rate as u64)
    );
    if let Some(total) = goal {
        if rate > 0.0 && total > sent {
            let eta = Duration::from_secs_f64((total - sent) as f64 / rate);
            s.push_str(&format!(", ETA {}", HumanDuration(eta)));
        }
    } else {
        s.push_str(", still being written");
    }
    s
}

/// The header lines of a mount.
fn header(a: &Value) -> Vec<String> {
    let cache = a.get("cache").cloned().unwrap_or(Value::Null);
    let (hits, misses) = (num(&cache, "hits"), num(&cache, "misses"));
    let rate = if hits + misses > 0 {
        format!("{:.1}% hits", 100.0 * hits as f64 / (hits + misses) as f64)
    } else {
        "no reads yet".to_string()
    };
    let mut lines = vec![
        format!(
            "{}: {} at {} ({}), up {}",
            text(a, "mountpoint"),
            text(a, "source"),
            text(a, "endpoint"),
            text(a, "region"),
            HumanDuration(Duration::from_secs(num(a, "uptime_seconds")))
        ),
        format!(
            "  block cache: {} of {} blocks ({} of {}), {rate}",
            num(&cache, "blocks"),
            num(&cache, "capacity_blocks"),
            HumanBytes(num(&cache, "blocks") * num(&cache, "block_size")),
            HumanBytes(num(&cache, "capacity_blocks") * num(&cache, "block_size")),
        ),
        format!(
            "  metadata: {} inodes, {} listings, {}{}",
            num(&a["metadata"], "inodes"),
            num(&a["metadata"], "listings"),
            HumanBytes(num(&a["metadata"], "bytes")),
            match num(&a["metadata"], "shed") {
                0 => String::new(),
                n => format!(" ({n} directories shed to stay within --metadata-memory)"),
            }
        ),
        requests_line(&a["s3"]),
    ];
    let s = &a["snapshot"];
    if s.is_object() {
        lines.push(format!(
            "  metadata snapshot: {} directories answered from it ({} proven by the queue), {} listed again ({} changed), {} files dropped",
            num(s, "served"),
            num(s, "proven"),
            num(s, "revalidated"),
            num(s, "changed"),
            num(s, "rejected")
        ));
    }
    let n = &a["notifications"];
    if n.is_object() {
        let lag = n["last_lag_seconds"]
            .as_f64()
            .map_or_else(String::new, |l| {
                format!(", the last {l:.1} s after its change")
            });
        let failing = if n["failing"].as_bool() == Some(true) {
            " (failing now: short TTLs apply)"
        } else {
            ""
        };
        lines.push(format!(
            "  notifications: {} events from {}{lag}{failing}",
            num(n, "events"),
            text(n, "queue")
        ));
    }
    lines
}

/// "S3 requests: 12 GetObject, 3 HeadObject (1 not_found)...": by operation, most first, with
/// the outcomes other than ok.
fn requests_line(s3: &Value) -> String {
    let mut by_op: Vec<(String, u64, Vec<String>)> = Vec::new();
    for r in list(s3, "requests") {
        let (op, outcome, count) = (text(r, "operation"), text(r, "outcome"), num(r, "count"));
        let i = match by_op.iter().position(|(o, ..)| o == op) {
            Some(i) => i,
            None => {
                by_op.push((op.to_string(), 0, Vec::new()));
                by_op.len() - 1
            }
        };
        by_op[i].1 += count;
        if outcome != "ok" {
            by_op[i].2.push(format!("{count} {outcome}"));
        }
    }
    if by_op.is_empty() {
        return "  S3 requests: none yet".to_string();
    }
    by_op.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let parts: Vec<String> = by_op
        .iter()
        .map(|(op, n, bad)| {
            if bad.is_empty() {
                format!("{n} {op}")
            } else {
                format!("{n} {op} ({})", bad.join(", "))
            }
        })
        .collect();
    format!(
        "  S3 requests: {}; {} retries, {} sent, {} received",
        parts.join(", "),
        num(s3, "retries"),
        HumanBytes(num(s3, "bytes_sent")),
        HumanBytes(num(s3, "bytes_received"))
    )
}

/// The lines after the uploads: files not yet committed, failures.
fn footer(a: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for p in list(a, "pending") {
        lines.push(format!(
            "  not yet committed: {} ({}{})",
            text(p, "path"),
            HumanBytes(num(p, "size")),
            if p.get("busy").and_then(Value::as_bool) == Some(true) {
                ", busy"
            } else {
                ""
            }
        ));
    }
    for f in list(a, "failures") {
        lines.push(format!(
            "  commit failed: {}: {}",
            text(f, "path"),
            text(f, "error")
        ));
    }
    if list(a, "uploads").is_empty() && list(a, "pending").is_empty() {
        lines.push("  nothing pending".to_string());
    }
    lines
}

/// Prints one mount's status once: bars on a terminal, lines otherwise.
fn show(a: &Value, tty: bool) {
    for line in header(a) {
        println!("{line}");
    }
    let uploads = list(a, "uploads");
    if tty && !uploads.is_empty() {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        for u in uploads {
            let bar = multi.add(upload_bar(u));
            bar.abandon();
        }
        // indicatif leaves the cursor at the end of the last bar.
        println!();
    } else {
        for u in uploads {
            println!("  {}", upload_line(u));
        }
    }
    for line in footer(a) {
        println!("{line}");
    }
}

/// An upload as one plain line.
fn upload_line(u: &Value) -> String {
    let sent = num(u, "bytes_sent");
    let of = match u.get("bytes_total").and_then(Value::as_u64) {
        Some(total) => format!(
            "{} of {} ({:.0}%)",
            HumanBytes(sent),
            HumanBytes(total),
            if total > 0 {
                100.0 * sent as f64 / total as f64
            } else {
                100.0
            }
        ),
        None => format!(
            "{} of {} written so far",
            HumanBytes(sent),
            HumanBytes(num(u, "bytes_written"))
        ),
    };
    format!("uploading {}: {of}, {}", text(u, "path"), upload_detail(u))
}

/// An upload as a progress bar: bytes sent of the total, or of what was written so far.
fn upload_bar(u: &Value) -> ProgressBar {
    let goal = u
        .get("bytes_total")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| num(u, "bytes_written"));
    let style = ProgressStyle::with_template("  {prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar =
        ProgressBar::with_draw_target(Some(goal), ProgressDrawTarget::hidden()).with_style(style);
    bar.set_prefix(text(u, "path").to_string());
    bar.set_position(num(u, "bytes_sent").min(goal));
    bar.set_message(upload_detail(u));
    bar
}

/// `--watch`: redraws every second until interrupted.
fn watch(mounts: &[MountEntry], args: &StatusArgs) -> ExitCode {
    let tty = std::io::stdout().is_terminal();
    loop {
        let (answers, _) = ask_all(mounts);
        if args.json {
            println!("{}", serde_json::json!({ "mounts": answers }));
        } else {
            if tty {
                // Clear the screen and go home, as watch(1) does.
                print!("\x1b[2J\x1b[H");
            }
            for a in &answers {
                show(a, tty);
            }
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `--wait`: returns once nothing is pending; non-zero when a commit failed meanwhile.
fn wait(mounts: &[MountEntry], args: &StatusArgs) -> ExitCode {
    let started = Instant::now();
    let mut since: Vec<Option<u64>> = vec![None; mounts.len()];
    let mut failures = Vec::new();
    let mut reported = false;
    loop {
        let mut busy = false;
        for (i, m) in mounts.iter().enumerate() {
            let a = match ask(m) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("bucketfs status: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let first = *since[i].get_or_insert(num(&a, "last_failure"));
            for f in list(&a, "failures") {
                let seq = num(f, "seq");
                if seq > first {
                    failures.push(format!("{}: {}", text(f, "path"), text(f, "error")));
                }
            }
            since[i] = Some(num(&a, "last_failure"));
            busy |= !list(&a, "uploads").is_empty() || !list(&a, "pending").is_empty();
            if busy && !reported && !args.json && std::io::stderr().is_terminal() {
                eprintln!(
                    "waiting for uploads and uncommitted files on {}",
                    m.path.display()
                );
                reported = true;
            }
        }
        if !busy {
            break;
        }
        if args.timeout.is_some_and(|t| started.elapsed() >= t) {
            eprintln!(
                "bucketfs status: still pending after {:?}",
                args.timeout.unwrap_or_default()
            );
            return ExitCode::from(3);
        }
        std::thread::sleep(WAIT_POLL);
    }
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    for f in &failures {
        eprintln!("bucketfs status: commit failed: {f}");
    }
    ExitCode::FAILURE
}
