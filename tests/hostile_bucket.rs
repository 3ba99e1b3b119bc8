//! A bucket written by someone hostile: keys no filesystem would hold, s3fs headers set to
//! garbage, a symlink of 1 MiB, a marker with a body, an object that shrinks after it was
//! listed. Ordinary tools walk it, read it, copy it out and remove it; the daemon never
//! panics, never writes outside its own directories, and the mount keeps serving. Against
//! moto, which stores keys verbatim (SeaweedFS refuses `.`/`..` components and collapses
//! `//`).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::moto::Moto;
use common::*;

/// Every header s3fs reads, and values no writer should have set.
const HEADERS: &[&str] = &[
    "mode", "uid", "gid", "mtime", "atime", "ctime", "rdev", "xattr",
];
const GARBAGE: &[&str] = &[
    "garbage",
    "-1",
    "-9223372036854775808",
    "18446744073709551616",
    "99999999999999999999999999.9999999999999",
    "",
    " ",
    "%ZZ%",
    "{\"a\":\"!!notbase64\"}",
    "0x10",
];

fn put_with(moto: &Moto, bucket: &str, key: &str, body: &[u8], meta: &[(&str, &str)]) -> bool {
    let mut call = moto
        .client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.to_vec().into());
    for (k, v) in meta {
        call = call.metadata(*k, *v);
    }
    match moto.rt.block_on(call.send()) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("moto refused {key:?}: {:?}", e.into_service_error());
            false
        }
    }
}

fn keys(moto: &Moto, bucket: &str) -> BTreeSet<String> {
    moto.rt.block_on(async {
        let mut out = BTreeSet::new();
        let mut pages = moto
            .client
            .list_objects_v2()
            .bucket(bucket)
            // Control characters cannot travel in XML 1.0 unencoded.
            .encoding_type(aws_sdk_s3::types::EncodingType::Url)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for o in page.unwrap().contents() {
                let raw = o.key().unwrap_or_default().replace('+', " ");
                out.insert(
                    percent_encoding::percent_decode_str(&raw)
                        .decode_utf8_lossy()
                        .into_owned(),
                );
            }
        }
        out
    })
}

/// Runs `script` with bash; returns (success, stdout + stderr). Failures of single files are
/// expected (EIO, ENAMETOOLONG); what matters is that the tool finishes.
fn tool(script: &str) -> (bool, String) {
    let out = within(
        std::time::Duration::from_secs(120),
        "a tool over the hostile bucket",
        {
            let script = script.to_string();
            move || {
                Command::new("bash")
                    .arg("-c")
                    .arg(&script)
                    .output()
                    .unwrap()
            }
        },
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Every file below `dir` (not following symlinks).
fn files_below(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&d) {
            for e in entries.flatten() {
                let p = e.path();
                out.insert(p.display().to_string());
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p);
                }
            }
        }
    }
    out
}

#[test]
fn a_hostile_bucket_is_walked_read_copied_and_removed_without_a_panic() {
    let moto = Moto::start();
    let bucket = "hostile-bucket";
    moto.create_bucket(bucket);
    let long_key = format!("long/{}", "k".repeat(1019));
    let mut seeded = vec![
        "..".to_string(),
        ".".to_string(),
        "a/../b".to_string(),
        "a/../../escape-marker".to_string(),
        "../escape-marker".to_string(),
        "a//b".to_string(),
        "/lead".to_string(),
        "trail//".to_string(),
        "ctl/bell\u{7}name".to_string(),
        "ctl/new\nline".to_string(),
        "ctl/del\u{7f}".to_string(),
        "ctl/tab\tname".to_string(),
        "ctl/%FF%FE-not-utf8-escape".to_string(),
        "pct/a%2Fb".to_string(),
        long_key.clone(),
        "side".to_string(),
        "side/child.txt".to_string(),
        "ok/plain.txt".to_string(),
    ];
    for key in &seeded {
        put_with(&moto, bucket, key, key.as_bytes(), &[]);
    }
    // A directory marker holding data.
    put_with(&moto, bucket, "marker/", b"a marker with a body", &[]);
    seeded.push("marker/".into());
    // A symlink (s3fs: mode S_IFLNK, the target is the body) whose target is 1 MiB.
    put_with(
        &moto,
        bucket,
        "links/huge",
        &vec![b'x'; 1 << 20],
        &[("mode", "41471")],
    );
    // Every s3fs header set to every kind of garbage, one object each.
    for (i, value) in GARBAGE.iter().enumerate() {
        let meta: Vec<(&str, &str)> = HEADERS.iter().map(|h| (*h, *value)).collect();
        put_with(
            &moto,
            bucket,
            &format!("headers/garbage-{i}"),
            b"body",
            &meta,
        );
    }
    // Modes that name every file type, and huge owners.
    for (i, mode) in ["8192", "24576", "4096", "49152", "4294967295", "0"]
        .iter()
        .enumerate()
    {
        put_with(
            &moto,
            bucket,
            &format!("headers/mode-{i}"),
            b"",
            &[
                ("mode", mode),
                ("rdev", "18446744073709551615"),
                ("uid", "4294967295"),
            ],
        );
    }
    let stored = keys(&moto, bucket);
    assert!(stored.contains(".."), "moto keeps hostile keys: {stored:?}");

    let staging = run_dir().join("hostile-staging");
    // The shared SeaweedFS (which `bucketfs_command` names) keeps its own files in the run
    // directory: started first, and its data directory left out of the comparison.
    server();
    let weed_data = run_dir().join("weed-data").display().to_string();
    let outside_before = files_below(&run_dir());
    let path = mount_point("hostile-bucket");
    let m = Mount::with_env(
        bucket,
        path.clone(),
        &[
            "--endpoint-url",
            &moto.endpoint,
            "--staging-dir",
            staging.to_str().unwrap(),
            "--metadata-ttl",
            "0",
        ],
        &moto.service_env(),
    );
    let root = m.path.display().to_string();
    let copy = run_dir().join("hostile-copy");

    let (_, listed) = tool(&format!("cd {root} && find . -ls"));
    assert!(listed.contains("./ok/plain.txt"), "{listed}");
    for (i, _) in GARBAGE.iter().enumerate() {
        assert!(
            listed.contains(&format!("./headers/garbage-{i}")),
            "an object with garbage headers is still shown: {listed}"
        );
    }
    // Names with control characters are names (XML 1.0 cannot carry them: the listing asks
    // for URL-encoded keys, or the whole page would fail to parse).
    let ctl: BTreeSet<String> = fs::read_dir(path.join("ctl"))
        .expect("the directory of control-character names lists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in [
        "bell\u{7}name",
        "del\u{7f}",
        "tab\tname",
        "%FF%FE-not-utf8-escape",
    ] {
        assert!(ctl.contains(name), "{name:?} not in {ctl:?}");
    }
    assert_eq!(
        fs::read_to_string(path.join("ctl/bell\u{7}name")).unwrap(),
        "ctl/bell\u{7}name"
    );
    tool(&format!(
        "cd {root} && find . -type f -print0 | xargs -0 -r cat > /dev/null"
    ));
    let (_, attrs) = tool(&format!("cd {root} && getfattr -R -d . 2>&1"));
    tool(&format!(
        "readlink {root}/links/huge; cat {root}/links/huge"
    ));
    tool(&format!("cp -a {root}/. {}", copy.display()));
    assert_eq!(
        fs::read_to_string(copy.join("ok/plain.txt")).unwrap(),
        "ok/plain.txt",
        "{attrs}"
    );
    // The mount still answers after all that, and says so in /proc/mounts.
    assert!(is_mounted(&path));
    assert_eq!(
        fs::read_to_string(path.join("ok/plain.txt")).unwrap(),
        "ok/plain.txt"
    );
    let (_, removed) = tool(&format!("rm -rf {root}/* {root}/.[!.]* 2>&1; ls -A {root}"));
    assert!(is_mounted(&path), "{removed}");
    // What the mount showed is gone from the bucket too (what it skipped stays).
    let left = keys(&moto, bucket);
    for key in [
        "ok/plain.txt",
        "side/child.txt",
        "headers/garbage-0",
        "links/huge",
    ] {
        assert!(!left.contains(key), "{key} left: {left:?}");
    }

    let log = fs::read_to_string(&m.log).unwrap_or_default();
    drop(m);
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    // Nothing was made outside the mount, the staging directory and the copy.
    let outside_after = files_below(&run_dir());
    let new: Vec<&String> = outside_after
        .difference(&outside_before)
        .filter(|p| {
            !p.starts_with(&staging.display().to_string())
                && !p.starts_with(&copy.display().to_string())
                && !p.starts_with(&path.display().to_string())
                && !p.starts_with(&weed_data)
                && !p.ends_with(".log")
        })
        .collect();
    assert!(new.is_empty(), "made outside: {new:?}");
    assert!(!run_dir().join("escape-marker").exists());
    assert!(!Path::new("/tmp/escape-marker").exists());
}
