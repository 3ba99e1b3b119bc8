//! The CSI node plugin as kubelet drives it: a gRPC client on the plugin's Unix socket, the
//! real binary, real mounts, SeaweedFS behind them. No cluster: the target paths are
//! directories of the test run, as kubelet's pod volume directories would be.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bucketfs::csi::proto::identity_client::IdentityClient;
use bucketfs::csi::proto::node_client::NodeClient;
use bucketfs::csi::proto::volume_capability::access_mode::Mode;
use bucketfs::csi::proto::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use bucketfs::csi::proto::*;
use common::{bucketfs_bin, eventually, is_mounted, run_dir, server, wait_gone, Bucket};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// A running `bucketfs csi`, its directories, and a runtime for the client; on drop the
/// plugin is killed and whatever it left mounted is unmounted.
struct Plugin {
    dir: PathBuf,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    channel: Channel,
    /// Each plugin runs as the first process of a pid namespace of its own, as in a
    /// container: killing it (`unshare --kill-child`) kills every process it started.
    contained: bool,
}

impl Plugin {
    fn start(name: &str) -> Self {
        Self::start_as(name, false)
    }

    /// A plugin in a "container" (see `contained`).
    fn start_contained(name: &str) -> Self {
        Self::start_as(name, true)
    }

    fn start_as(name: &str, contained: bool) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = run_dir().join(format!("csi-{name}-{}", N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(dir.join("pods")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let child = Self::spawn(&dir, contained, "ready");
        let channel = Self::connect(&dir, &rt, &dir.join("ready"));
        Self {
            dir,
            child: Some(child),
            rt,
            channel,
            contained,
        }
    }

    fn spawn(dir: &Path, contained: bool, ready: &str) -> Child {
        let socket = dir.join("csi.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("plugin.log"))
            .unwrap();
        let _ = std::fs::remove_file(dir.join(ready));
        let mut cmd = if contained {
            let mut cmd = Command::new("unshare");
            cmd.args(["--pid", "--kill-child"]).arg(bucketfs_bin());
            cmd
        } else {
            Command::new(bucketfs_bin())
        };
        cmd.arg("csi")
            .arg("--csi-endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--node-id")
            .arg("node-1")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--ready-file")
            .arg(dir.join(ready))
            .arg("--")
            .arg("--endpoint-url")
            .arg(&server().endpoint)
            .arg("--force-path-style")
            .arg("--staging-dir")
            .arg(run_dir().join("staging"))
            // No credentials but the publish's secret: item 3's path is the one tested.
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bucketfs csi")
    }

    /// A channel to the plugin that made `ready` (the socket of a predecessor may still be
    /// there, killed or running).
    fn connect(dir: &Path, rt: &tokio::runtime::Runtime, ready: &Path) -> Channel {
        let socket = dir.join("csi.sock");
        let made = eventually(Duration::from_secs(60), || ready.exists());
        assert!(
            made,
            "the plugin did not become ready: {}",
            std::fs::read_to_string(dir.join("plugin.log")).unwrap_or_default()
        );
        let mut channel = None;
        let listening = eventually(Duration::from_secs(20), || {
            let socket = socket.clone();
            channel = rt
                .block_on(
                    Endpoint::try_from("http://[::]:50051")
                        .unwrap()
                        .connect_with_connector(tower::service_fn(move |_| {
                            let socket = socket.clone();
                            async move {
                                let stream = tokio::net::UnixStream::connect(socket).await?;
                                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                            }
                        })),
                )
                .ok();
            channel.is_some()
        });
        assert!(
            listening,
            "the plugin did not listen: {}",
            std::fs::read_to_string(dir.join("plugin.log")).unwrap_or_default()
        );
        channel.unwrap()
    }

    /// Kills the plugin (SIGKILL) and starts it again over the same directories.
    fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        self.child = Some(Self::spawn(&self.dir, self.contained, "ready"));
        self.channel = Self::connect(&self.dir, &self.rt, &self.dir.join("ready"));
    }

    /// A rolling update with a surge: a new plugin starts beside the running one and, once
    /// ready, replaces it here; the old one is returned with a channel to it, still running.
    fn roll(&mut self) -> (Child, Channel) {
        static N: AtomicU32 = AtomicU32::new(0);
        let ready = format!("ready-{}", N.fetch_add(1, Ordering::Relaxed));
        let child = Self::spawn(&self.dir, self.contained, &ready);
        let channel = Self::connect(&self.dir, &self.rt, &self.dir.join(&ready));
        let old = self.child.replace(child).unwrap();
        (old, std::mem::replace(&mut self.channel, channel))
    }

    fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel.clone())
    }

    fn target(&self, pod: &str) -> PathBuf {
        self.dir.join("pods").join(pod).join("mount")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("plugin.log")).unwrap_or_default()
    }

    fn publish(&self, req: NodePublishVolumeRequest) -> Result<(), tonic::Status> {
        let mut node = self.node();
        self.rt.block_on(node.node_publish_volume(req)).map(|_| ())
    }

    fn unpublish(&self, volume: &str, target: &Path) -> Result<(), tonic::Status> {
        let mut node = self.node();
        self.rt
            .block_on(node.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: volume.to_string(),
                target_path: target.display().to_string(),
            }))
            .map(|_| ())
    }

    /// Mount points under the plugin's directory.
    fn mounts(&self) -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.display().to_string();
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&dir))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Targets first, then the daemons' own mounts.
        let mut left = self.mounts();
        left.sort_by_key(|p| std::cmp::Reverse(p.contains("/pods/")));
        for path in left {
            let _ = Command::new("umount").arg("-l").arg(&path).status();
        }
    }
}

fn capability(mode: Mode) -> Option<VolumeCapability> {
    Some(VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    })
}

fn secrets() -> HashMap<String, String> {
    HashMap::from([
        ("accessKeyId".to_string(), common::ACCESS_KEY.to_string()),
        (
            "secretAccessKey".to_string(),
            common::SECRET_KEY.to_string(),
        ),
    ])
}

fn publish_request(volume: &str, target: &Path, readonly: bool) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume.to_string(),
        target_path: target.display().to_string(),
        volume_capability: capability(Mode::MultiNodeMultiWriter),
        readonly,
        secrets: secrets(),
        ..Default::default()
    }
}

/// Daemons serving a mount under the plugin's directory.
fn daemons(plugin: &Plugin) -> Vec<u32> {
    let dir = plugin.dir.join("state").join("mnt");
    let want = dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&want) && !cmdline.contains(" csi ") {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn identity_and_node_info_answer_as_the_spec_says() {
    let p = Plugin::start("identity");
    let mut identity = IdentityClient::new(p.channel.clone());
    let info =
        p.rt.block_on(identity.get_plugin_info(GetPluginInfoRequest {}))
            .unwrap()
            .into_inner();
    assert_eq!(info.name, bucketfs::csi::DRIVER_NAME);
    assert!(!info.vendor_version.is_empty());
    let probe =
        p.rt.block_on(identity.probe(ProbeRequest {}))
            .unwrap()
            .into_inner();
    assert_eq!(probe.ready, Some(true));
    let mut node = p.node();
    let node_info =
        p.rt.block_on(node.node_get_info(NodeGetInfoRequest {}))
            .unwrap()
            .into_inner();
    assert_eq!(node_info.node_id, "node-1");
    let caps =
        p.rt.block_on(node.node_get_capabilities(NodeGetCapabilitiesRequest {}))
            .unwrap()
            .into_inner();
    assert_eq!(caps.capabilities.len(), 2, "{caps:?}");
}

#[test]
fn a_volume_is_shared_by_two_pods_and_stops_after_the_last() {
    let b = Bucket::new("csi-share");
    b.put("hello.txt", b"hello from s3".to_vec());
    let p = Plugin::start("share");
    let (t1, t2) = (p.target("pod-a"), p.target("pod-b"));

    p.publish(publish_request(&b.name, &t1, false)).unwrap();
    assert!(is_mounted(&t1));
    assert_eq!(
        std::fs::read(t1.join("hello.txt")).unwrap(),
        b"hello from s3"
    );
    std::fs::write(t1.join("from-pod-a.txt"), b"written by pod a").unwrap();
    assert_eq!(b.get("from-pod-a.txt"), b"written by pod a");

    // The same call again: nothing changes (idempotent). Other parameters at the same
    // target: ALREADY_EXISTS.
    p.publish(publish_request(&b.name, &t1, false)).unwrap();
    let err = p.publish(publish_request(&b.name, &t1, true)).unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // A second pod shares the daemon.
    p.publish(publish_request(&b.name, &t2, false)).unwrap();
    assert_eq!(
        std::fs::read(t2.join("from-pod-a.txt")).unwrap(),
        b"written by pod a"
    );
    let pids = daemons(&p);
    assert_eq!(pids.len(), 1, "one daemon per volume: {pids:?}");

    // The secret went through the daemon's environment, never its command line or a log.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(!cmdline.contains(common::SECRET_KEY), "{cmdline}");
    assert!(!p.log().contains(common::SECRET_KEY));

    // One pod goes; the other keeps working.
    p.unpublish(&b.name, &t1).unwrap();
    assert!(!is_mounted(&t1));
    assert!(!t1.exists(), "the target directory is removed");
    p.unpublish(&b.name, &t1).unwrap();
    std::fs::write(t2.join("from-pod-b.txt"), b"b").unwrap();
    assert_eq!(b.get("from-pod-b.txt"), b"b");

    // The last one goes: the daemon exits, nothing is left mounted.
    p.unpublish(&b.name, &t2).unwrap();
    assert!(
        wait_gone(pids[0], Duration::from_secs(30)),
        "the daemon exits"
    );
    assert!(p.mounts().is_empty(), "left mounted: {:?}", p.mounts());
    p.unpublish(&b.name, &t2).unwrap();
}

#[test]
fn a_read_only_publish_refuses_writes() {
    let b = Bucket::new("csi-ro");
    b.put("data.bin", b"data".to_vec());
    let p = Plugin::start("ro");
    let t = p.target("reader");
    p.publish(publish_request(&b.name, &t, true)).unwrap();
    assert_eq!(std::fs::read(t.join("data.bin")).unwrap(), b"data");
    let err = std::fs::write(t.join("new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // A writer pod of the same volume shares the daemon and can write.
    let w = p.target("writer");
    p.publish(publish_request(&b.name, &w, false)).unwrap();
    std::fs::write(w.join("new.txt"), b"x").unwrap();
    assert_eq!(
        std::fs::write(t.join("other.txt"), b"x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS)
    );
    p.unpublish(&b.name, &t).unwrap();
    p.unpublish(&b.name, &w).unwrap();
    assert!(p.mounts().is_empty(), "{:?}", p.mounts());
}

#[test]
fn bad_requests_get_the_codes_of_the_spec() {
    let b = Bucket::new("csi-errors");
    let p = Plugin::start("errors");
    let t = p.target("pod");
    let code = |r: Result<(), tonic::Status>| r.unwrap_err().code();

    let mut req = publish_request(&b.name, &t, false);
    req.volume_id.clear();
    assert_eq!(code(p.publish(req)), Code::InvalidArgument);
    let mut req = publish_request(&b.name, &t, false);
    req.target_path.clear();
    assert_eq!(code(p.publish(req)), Code::InvalidArgument);
    let mut req = publish_request(&b.name, &t, false);
    req.target_path = "relative/path".to_string();
    assert_eq!(code(p.publish(req)), Code::InvalidArgument);
    let mut req = publish_request(&b.name, &t, false);
    req.volume_capability = None;
    assert_eq!(code(p.publish(req)), Code::InvalidArgument);
    let mut req = publish_request(&b.name, &t, false);
    req.volume_capability = Some(VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    });
    assert_eq!(code(p.publish(req)), Code::InvalidArgument);
    // A pod author cannot point the node's daemon at its own paths or endpoints.
    for key in [
        "staging-dir",
        "log-file",
        "disk-cache",
        "endpoint-url",
        "metrics-addr",
    ] {
        let mut req = publish_request(&b.name, &t, false);
        req.volume_context = HashMap::from([(key.to_string(), "/tmp/x".to_string())]);
        let err = p.publish(req).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{key}: {err:?}");
    }
    // A handle that is not a bucket name.
    let req = publish_request("--log-file=/etc/x", &t, false);
    assert_eq!(code(p.publish(req)), Code::InvalidArgument);
    // A bucket that does not exist: an error, and nothing left mounted.
    let req = publish_request("no-such-bucket-csi", &t, false);
    let err = p.publish(req).unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert!(p.mounts().is_empty(), "{:?}", p.mounts());

    assert_eq!(code(p.unpublish("", &t)), Code::InvalidArgument);
    assert_eq!(
        code(p.unpublish(&b.name, Path::new(""))),
        Code::InvalidArgument
    );
    // Unpublishing what is not published succeeds (a retried call after a crash).
    p.unpublish(&b.name, &t).unwrap();
    // A target reached through a symbolic link is refused: the bind mount would land
    // wherever the link points.
    let elsewhere = p.dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, p.dir.join("pods").join("linked")).unwrap();
    let linked = p.dir.join("pods").join("linked").join("mount");
    let err = p
        .publish(publish_request(&b.name, &linked, false))
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(p.mounts().is_empty(), "{:?}", p.mounts());
    assert!(
        daemons(&p).is_empty(),
        "a daemon started for a refused publish stops"
    );

    let node = p.node();
    let stats = |volume: &str, path: &Path| {
        p.rt.block_on(
            node.clone()
                .node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id: volume.to_string(),
                    volume_path: path.display().to_string(),
                    staging_target_path: String::new(),
                }),
        )
    };
    assert_eq!(stats("", &t).unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(stats(&b.name, &t).unwrap_err().code(), Code::NotFound);
    p.publish(publish_request(&b.name, &t, false)).unwrap();
    let usage = stats(&b.name, &t).unwrap().into_inner().usage;
    assert_eq!(usage.len(), 2, "bytes and inodes: {usage:?}");
    p.unpublish(&b.name, &t).unwrap();
}

/// Kubelet may call twice at once for one volume (after its own restart): the second call
/// gets ABORTED while the first mounts, or succeeds after it; never a second daemon.
#[test]
fn concurrent_calls_on_one_volume_do_not_start_two_daemons() {
    let b = Bucket::new("csi-concurrent");
    let p = Plugin::start("concurrent");
    let targets: Vec<PathBuf> = (0..4).map(|i| p.target(&format!("pod-{i}"))).collect();
    let results: Vec<Result<(), tonic::Status>> = p.rt.block_on(async {
        let calls = targets.iter().map(|t| {
            let mut node = p.node();
            let req = publish_request(&b.name, t, false);
            async move { node.node_publish_volume(req).await.map(|_| ()) }
        });
        futures::future::join_all(calls).await
    });
    let mut published = Vec::new();
    for (t, r) in targets.iter().zip(&results) {
        match r {
            Ok(()) => published.push(t.clone()),
            Err(e) => assert_eq!(e.code(), Code::Aborted, "{e:?}"),
        }
    }
    assert!(!published.is_empty(), "{results:?}");
    assert_eq!(daemons(&p).len(), 1);
    for t in &published {
        p.unpublish(&b.name, t).unwrap();
    }
    assert!(p.mounts().is_empty(), "{:?}", p.mounts());
}

/// A DaemonSet's rolling update kills the plugin: the pods' mounts keep serving, and the new
/// plugin unpublishes them cleanly.
/// Reads `path` in a loop, expecting `body`, until the flag is set; the thread returns the
/// number of reads, or the first error.
fn read_loop(
    path: PathBuf,
    body: Vec<u8>,
) -> (
    Arc<AtomicBool>,
    std::thread::JoinHandle<Result<u32, String>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let reader = std::thread::spawn(move || {
        let mut reads = 0u32;
        while !flag.load(Ordering::Relaxed) {
            let got = std::fs::read(&path).map_err(|e| format!("read {reads}: {e}"))?;
            if got != body {
                return Err("read other bytes".to_string());
            }
            reads += 1;
        }
        Ok(reads)
    });
    (stop, reader)
}

#[test]
fn a_killed_plugin_leaves_the_pods_reading() {
    let b = Bucket::new("csi-restart");
    let body = common::pseudo_random(1 << 20, 7);
    b.put("big.bin", body.clone());
    let mut p = Plugin::start("restart");
    let t = p.target("pod");
    p.publish(publish_request(&b.name, &t, false)).unwrap();
    let pids = daemons(&p);

    let (stop, reader) = read_loop(t.join("big.bin"), body.clone());
    std::thread::sleep(Duration::from_millis(500));
    p.restart();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap().expect("reads through the restart");
    assert!(reads > 0);
    // The new plugin took the daemon over: one daemon serves, a process of the new plugin's.
    let pids = {
        let now = daemons(&p);
        assert_eq!(now.len(), 1, "{now:?}");
        assert_ne!(now, pids, "the daemon was not taken over");
        now
    };
    assert!(p.log().contains("taken back"), "{}", p.log());
    assert!(p.log().contains("daemon taken over"), "{}", p.log());

    // The volume's daemon dies: the next publish mounts the volume with a new one.
    unsafe {
        libc::kill(pids[0] as i32, libc::SIGKILL);
    }
    assert!(wait_gone(pids[0], Duration::from_secs(10)));
    let t2 = p.target("pod-2");
    p.publish(publish_request(&b.name, &t2, false)).unwrap();
    assert_eq!(std::fs::read(t2.join("big.bin")).unwrap(), body);
    let new = daemons(&p);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new, pids);

    // Another volume's id does not unmount this target.
    let err = p.unpublish("other-volume", &t2).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    p.unpublish(&b.name, &t).unwrap();
    p.unpublish(&b.name, &t2).unwrap();
    assert!(wait_gone(new[0], Duration::from_secs(30)));
    assert!(p.mounts().is_empty(), "{:?}", p.mounts());
}

/// A rolling update as the DaemonSet makes it (deploy/kubernetes/node.yaml: a surge, the new
/// pod first): each plugin is a "container" (its own pid namespace: killing it kills all it
/// started). The new plugin takes every daemon over before it is ready, the old one refuses
/// calls from then on, and killing the old container leaves the pods reading and writing.
#[test]
fn a_rolling_update_hands_every_mount_to_the_new_plugin_before_the_old_container_goes() {
    let b = Bucket::new("csi-roll");
    let body = common::pseudo_random(1 << 20, 9);
    b.put("big.bin", body.clone());
    let other = Bucket::new("csi-roll-other");
    other.put("small.txt", b"small".to_vec());
    let mut p = Plugin::start_contained("roll");
    let t = p.target("pod");
    let t2 = p.target("pod-2");
    p.publish(publish_request(&b.name, &t, false)).unwrap();
    p.publish(publish_request(&other.name, &t2, false)).unwrap();
    let before = daemons(&p);
    assert_eq!(before.len(), 2, "{before:?}");

    let (stop, reader) = read_loop(t.join("big.bin"), body);
    std::thread::sleep(Duration::from_millis(300));
    let (mut old, old_channel) = p.roll();

    // The old plugin, still running, refuses calls: the new one is in charge.
    let mut old_node = NodeClient::new(old_channel);
    let err = p
        .rt
        .block_on(old_node.node_publish_volume(publish_request(&b.name, &p.target("pod-3"), false)))
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err =
        p.rt.block_on(old_node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: b.name.clone(),
            target_path: t.display().to_string(),
        }))
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        t.join("big.bin").exists(),
        "the refused unpublish unmounted"
    );

    // The old container goes as kubelet stops it: SIGTERM to its first process (the plugin),
    // which ends it, and with it every process the container ever started.
    let children = format!("/proc/{0}/task/{0}/children", old.id());
    let plugin: i32 = std::fs::read_to_string(&children)
        .unwrap()
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .expect("the old plugin's pid");
    unsafe {
        libc::kill(plugin, libc::SIGTERM);
    }
    let ended = eventually(Duration::from_secs(20), || {
        old.try_wait().ok().flatten().is_some()
    });
    assert!(ended, "the old plugin did not stop at SIGTERM");
    let _ = old.kill();
    let _ = old.wait();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap().expect("reads through the update");
    assert!(reads > 0);
    assert!(p.log().contains("daemon taken over"), "{}", p.log());
    let after = daemons(&p);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.iter().all(|pid| !before.contains(pid)),
        "{before:?} {after:?}"
    );
    assert_eq!(std::fs::read(t2.join("small.txt")).unwrap(), b"small");
    std::fs::write(t.join("written.txt"), b"after the update").unwrap();
    assert_eq!(b.get("written.txt"), b"after the update");
    // The old plugin, on its way out, left the new one's socket alone.
    assert!(p.dir.join("csi.sock").exists());

    // The new plugin unpublishes cleanly: its daemons exit and nothing stays mounted.
    p.unpublish(&b.name, &t).unwrap();
    p.unpublish(&other.name, &t2).unwrap();
    for pid in after {
        assert!(
            wait_gone(pid, Duration::from_secs(30)),
            "daemon {pid} still runs"
        );
    }
    assert!(p.mounts().is_empty(), "{:?}", p.mounts());
}

/// deploy/kubernetes parses, and its names, socket paths and mount propagation agree with
/// each other and with the plugin.
#[test]
fn deploy_manifests_agree() {
    use yaml_rust2::{Yaml, YamlLoader};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut docs: Vec<Yaml> = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed = YamlLoader::load_from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for doc in &parsed {
                assert!(
                    doc["apiVersion"].as_str().is_some() && doc["kind"].as_str().is_some(),
                    "{}: a document without apiVersion or kind",
                    path.display()
                );
            }
            docs.extend(parsed);
        }
    }
    assert!(dir.join("Containerfile").exists());
    let kind = |k: &str| -> Vec<&Yaml> {
        docs.iter()
            .filter(|d| d["kind"].as_str() == Some(k))
            .collect()
    };
    let driver = bucketfs::csi::DRIVER_NAME;

    let csidriver = kind("CSIDriver");
    assert_eq!(csidriver.len(), 1);
    let spec = &csidriver[0]["spec"];
    assert_eq!(csidriver[0]["metadata"]["name"].as_str(), Some(driver));
    assert_eq!(spec["attachRequired"].as_bool(), Some(false));
    assert_eq!(spec["podInfoOnMount"].as_bool(), Some(true));
    let modes: Vec<&str> = spec["volumeLifecycleModes"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(modes, ["Persistent", "Ephemeral"]);

    let ds = kind("DaemonSet");
    assert_eq!(ds.len(), 1);
    let pod = &ds[0]["spec"]["template"]["spec"];
    let host_path = |name: &str| -> String {
        pod["volumes"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_else(|| panic!("no hostPath volume {name}"))
            .to_string()
    };
    let container = |name: &str| -> &Yaml {
        pod["containers"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|c| c["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no container {name}"))
    };
    let mount = |c: &Yaml, volume: &str| -> (String, Option<String>) {
        let m = c["volumeMounts"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|m| m["name"].as_str() == Some(volume))
            .unwrap_or_else(|| panic!("{volume} is not mounted"));
        (
            m["mountPath"].as_str().unwrap().to_string(),
            m["mountPropagation"].as_str().map(str::to_string),
        )
    };
    let args = |c: &Yaml| -> Vec<String> {
        c["args"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect()
    };
    let plugin = container("bucketfs-csi");
    let registrar = container("node-driver-registrar");
    let plugin_dir = host_path("plugin-dir");
    assert_eq!(plugin_dir, format!("/var/lib/kubelet/plugins/{driver}"));
    let (plugin_mount, _) = mount(plugin, "plugin-dir");
    let (registrar_mount, _) = mount(registrar, "plugin-dir");
    assert_eq!(plugin_mount, registrar_mount);
    let socket = format!("{plugin_mount}/csi.sock");
    assert!(args(plugin).contains(&format!("--csi-endpoint=unix://{socket}")));
    assert!(args(registrar).contains(&format!("--csi-address={socket}")));
    assert!(args(registrar).contains(&format!(
        "--kubelet-registration-path={plugin_dir}/csi.sock"
    )));
    assert_eq!(
        host_path("registration-dir"),
        "/var/lib/kubelet/plugins_registry"
    );
    assert_eq!(mount(registrar, "registration-dir").0, "/registration");
    assert_eq!(host_path("pods-dir"), "/var/lib/kubelet/pods");
    assert_eq!(
        mount(plugin, "pods-dir"),
        (
            "/var/lib/kubelet/pods".to_string(),
            Some("Bidirectional".to_string())
        )
    );
    assert_eq!(host_path("fuse"), "/dev/fuse");
    // Updates surge and the old pod stops once the new one is ready (mod.rs, 5.): its
    // readiness is the file the plugin makes, and the daemons' sockets are the host's.
    let update = &ds[0]["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(update["maxUnavailable"].as_i64(), Some(0));
    assert!(update["maxSurge"].as_i64().unwrap_or(0) >= 1);
    let ready = args(plugin)
        .iter()
        .find_map(|a| a.strip_prefix("--ready-file=").map(str::to_string))
        .expect("--ready-file");
    let probe: Vec<&str> = plugin["readinessProbe"]["exec"]["command"]
        .as_vec()
        .expect("a readiness probe")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(probe.last(), Some(&ready.as_str()), "{probe:?}");
    assert_eq!(host_path("run-dir"), "/run/bucketfs");
    assert_eq!(mount(plugin, "run-dir").0, "/run/bucketfs");
    let health = args(registrar)
        .iter()
        .find_map(|a| a.strip_prefix("--http-endpoint=:").map(str::to_string))
        .expect("the registrar's --http-endpoint");
    assert_eq!(
        registrar["livenessProbe"]["httpGet"]["port"]
            .as_i64()
            .map(|p| p.to_string()),
        Some(health)
    );
    assert_eq!(
        plugin["securityContext"]["privileged"].as_bool(),
        Some(true)
    );
    // The plugin's own options parse as the binary takes them.
    let plugin_args = args(plugin);
    let after = plugin_args
        .iter()
        .skip_while(|a| *a != "--")
        .skip(1)
        .cloned()
        .collect::<Vec<_>>();
    bucketfs::csi::options::check_plugin_options(&after).unwrap();

    // The examples use the driver.
    let pv = kind("PersistentVolume");
    assert_eq!(pv[0]["spec"]["csi"]["driver"].as_str(), Some(driver));
    let inline = kind("Pod")
        .into_iter()
        .flat_map(|p| p["spec"]["volumes"].as_vec().unwrap().iter())
        .filter_map(|v| v["csi"]["driver"].as_str())
        .collect::<Vec<_>>();
    assert_eq!(inline, [driver]);
}

/// An inline volume names its bucket in its attributes; the pod's fsGroup (the volume mount
/// group) owns its files, group-writable, as the pod's processes need.
#[test]
fn an_inline_volume_with_a_mount_group() {
    use std::os::unix::fs::MetadataExt;
    let b = Bucket::new("csi-inline");
    b.put("team/notes.txt", b"notes".to_vec());
    let p = Plugin::start("inline");
    let t = p.target("inline-pod");
    let mut req = publish_request("csi-4f9e0c", &t, false);
    req.volume_context = HashMap::from([
        (
            "csi.storage.k8s.io/ephemeral".to_string(),
            "true".to_string(),
        ),
        (
            "csi.storage.k8s.io/pod.name".to_string(),
            "web-0".to_string(),
        ),
        ("bucket".to_string(), b.name.clone()),
        ("prefix".to_string(), "team/".to_string()),
    ]);
    req.volume_capability = Some(VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            volume_mount_group: "2000".to_string(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    });
    p.publish(req).unwrap();
    let meta = std::fs::metadata(t.join("notes.txt")).unwrap();
    assert_eq!(meta.gid(), 2000);
    assert_eq!(meta.mode() & 0o777, 0o664);
    assert_eq!(std::fs::metadata(&t).unwrap().mode() & 0o777, 0o775);
    std::fs::write(t.join("new.txt"), b"n").unwrap();
    assert_eq!(b.get("team/new.txt"), b"n");
    p.unpublish("csi-4f9e0c", &t).unwrap();
    assert!(p.mounts().is_empty(), "{:?}", p.mounts());
}
