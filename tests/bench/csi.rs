//! `csi-bench`: the CSI node plugin's figures (issue 28): publish-to-ready time of a volume
//! (a fresh volume each time: the daemon started, the bucket checked, the bind mount made,
//! until NodePublishVolume returns, which it does once the mount answers), and the plugin's
//! RSS (and its daemons') with N volumes published. Prints one JSON line.
//!
//!   cargo run --release --example csi-bench -- --bucketfs target/release/bucketfs \
//!     --endpoint http://127.0.0.1:8333 --bucket B --dir /tmp/csi-bench
//!
//! Credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, passed as the publish secret.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bucketfs::csi::proto::node_client::NodeClient;
use bucketfs::csi::proto::volume_capability::access_mode::Mode;
use bucketfs::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use bucketfs::csi::proto::{
    NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability,
};
use clap::Parser;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(name = "csi-bench", about = "figures of the CSI node plugin")]
struct Args {
    /// The bucketfs binary (its `csi` command is the plugin)
    #[arg(long)]
    bucketfs: PathBuf,
    /// S3 endpoint, e.g. http://127.0.0.1:8333
    #[arg(long)]
    endpoint: String,
    /// An existing bucket; each volume is a prefix of it
    #[arg(long)]
    bucket: String,
    /// A directory of the bench's own (the plugin's state and the targets)
    #[arg(long)]
    dir: PathBuf,
    /// Publishes timed
    #[arg(long, default_value_t = 20)]
    publishes: usize,
    /// Volumes published at once for the RSS figure
    #[arg(long, default_value_t = 10)]
    volumes: usize,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Pids of the daemons mounted under `mnt`.
fn daemons(mnt: &Path) -> Vec<u32> {
    let want = mnt.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&want) && !cmdline.contains(" csi ") {
            pids.push(pid);
        }
    }
    pids
}

async fn connect(socket: &Path) -> Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = socket.to_path_buf();
        let tried = Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await;
        match tried {
            Ok(channel) => return Ok(channel),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("the plugin does not answer: {e}"),
        }
    }
}

fn request(
    volume: &str,
    target: &Path,
    secrets: &HashMap<String, String>,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume.to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeMultiWriter as i32,
            }),
        }),
        secrets: secrets.clone(),
        ..Default::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let secrets = HashMap::from([
        (
            "accessKeyId".to_string(),
            std::env::var("AWS_ACCESS_KEY_ID").context("AWS_ACCESS_KEY_ID")?,
        ),
        (
            "secretAccessKey".to_string(),
            std::env::var("AWS_SECRET_ACCESS_KEY").context("AWS_SECRET_ACCESS_KEY")?,
        ),
    ]);
    std::fs::create_dir_all(args.dir.join("pods"))?;
    let socket = args.dir.join("csi.sock");
    let mut plugin = spawn_plugin(&args, &socket, &args.dir.join("ready"))?;
    let result = measure(&args, &socket, &secrets).await;
    let _ = plugin.kill();
    let _ = plugin.wait();
    let (times, plugin_rss, daemons_rss, handover_ms) = result?;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "publish_ms": times,
            "publish_median_ms": sorted[sorted.len() / 2],
            "volumes": args.volumes,
            "plugin_rss_kib": plugin_rss,
            "daemons_rss_kib": daemons_rss,
            "update_handover_ms": handover_ms,
        })
    );
    Ok(())
}

/// `bucketfs csi` on `socket`, making `ready` once it serves.
fn spawn_plugin(args: &Args, socket: &Path, ready: &Path) -> Result<std::process::Child> {
    Command::new(&args.bucketfs)
        .arg("csi")
        .arg("--csi-endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args(["--node-id", "bench"])
        .arg("--state-dir")
        .arg(args.dir.join("state"))
        .arg("--ready-file")
        .arg(ready)
        .args(["--", "--endpoint-url", &args.endpoint, "--force-path-style"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the plugin")
}

/// Publish times (ms), the plugin's and the daemons' RSS (KiB) with `args.volumes`
/// published, and how long a new plugin (a rolling update's) takes to take them over.
async fn measure(
    args: &Args,
    socket: &Path,
    secrets: &HashMap<String, String>,
) -> Result<(Vec<f64>, u64, u64, f64)> {
    let mut node = NodeClient::new(connect(socket).await?);
    let mut times = Vec::new();
    for i in 0..args.publishes.max(1) {
        let volume = format!("{}:publish-{i}/", args.bucket);
        let target = args.dir.join("pods").join(format!("p{i}"));
        let started = Instant::now();
        node.node_publish_volume(request(&volume, &target, secrets))
            .await
            .context("publish")?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        std::fs::read_dir(&target).context("the published volume")?;
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: volume,
            target_path: target.display().to_string(),
        })
        .await
        .context("unpublish")?;
    }
    let mut published = Vec::new();
    for i in 0..args.volumes {
        let volume = format!("{}:volume-{i}/", args.bucket);
        let target = args.dir.join("pods").join(format!("v{i}"));
        node.node_publish_volume(request(&volume, &target, secrets))
            .await
            .context("publish")?;
        published.push((volume, target));
    }
    let plugin_pid = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(" csi ") && cmdline.contains(&socket.display().to_string())
        })
        .context("the plugin's pid")?;
    let plugin_rss = rss_kib(plugin_pid);
    let daemons_rss = daemons(&args.dir.join("state").join("mnt"))
        .into_iter()
        .map(rss_kib)
        .sum();
    // A rolling update: a second plugin beside the first, ready once it has taken every
    // volume's daemon over.
    let ready = args.dir.join("ready-successor");
    let started = Instant::now();
    let mut successor = spawn_plugin(args, socket, &ready)?;
    while !ready.exists() {
        if started.elapsed() > Duration::from_secs(300) {
            let _ = successor.kill();
            bail!("the successor did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let handover_ms = started.elapsed().as_secs_f64() * 1000.0;
    let result = unpublish_all(socket, published).await;
    let _ = successor.kill();
    let _ = successor.wait();
    result?;
    Ok((times, plugin_rss, daemons_rss, handover_ms))
}

async fn unpublish_all(socket: &Path, published: Vec<(String, PathBuf)>) -> Result<()> {
    let mut node = NodeClient::new(connect(socket).await?);
    for (volume, target) in published {
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: volume,
            target_path: target.display().to_string(),
        })
        .await
        .context("unpublish")?;
    }
    Ok(())
}
