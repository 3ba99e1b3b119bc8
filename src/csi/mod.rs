//! `bucketfs csi`: the Kubernetes CSI node plugin (docs/KUBERNETES.md). It serves the CSI
//! Identity and Node services over a Unix socket (gRPC, tonic; the specification's proto,
//! src/csi/csi.proto, compiled at build), and publishes each volume as a bucketfs mount.
//!
//! Non-obvious problems:
//! 1. One daemon per volume and node: the first publish mounts the bucket at the volume's
//!    own directory under `--state-dir`, every publish (the first included) bind-mounts that
//!    directory at its target path (read-only for a read-only publish), and the last
//!    unpublish unmounts it, which ends the daemon (volume.rs).
//! 2. The daemons are processes of their own, not the plugin's threads: a plugin killed or
//!    restarted leaves every mount serving. What the plugin knows of its volumes is written
//!    to `--state-dir` (one record per volume, never a secret) and read back at start,
//!    against the system's mount table.
//! 3. Secrets (the node-publish secret) reach the daemon through its environment, never
//!    its argv, the log or an error; volume attributes are an allow-list (options.rs): a pod
//!    author never names a path, an endpoint or a port of the node.
//! 4. One call at a time per volume: another call on a volume busy with one gets ABORTED,
//!    as the specification allows, rather than waiting behind a mount that may take long.
//! 5. A container takes its processes with it, the daemons it started included. So a
//!    DaemonSet's rolling update starts the new plugin's pod before the old one goes
//!    (`maxSurge`), and the new plugin takes charge before it listens: it waits for the old
//!    one's calls under way (a lock on `plugin.lock` in `--state-dir`, shared by each call,
//!    exclusive while taking charge), writes its generation there, so the old one refuses
//!    every later call with UNAVAILABLE, and takes every live daemon over (`bucketfs
//!    takeover`, docs/RESTART.md) through the status sockets in `/run/bucketfs` (a host
//!    directory in the DaemonSet). Only then does it listen and write its `--ready-file`, and
//!    only then does Kubernetes stop the old pod, whose daemons have already handed over and
//!    exited. The old plugin leaves the socket path alone when it is no longer its socket.

pub mod options;
mod service;
mod volume;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::cli::CsiArgs;

/// The generated CSI types, clients and servers (package `csi.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

/// The driver's name, as GetPluginInfo, the CSIDriver object and kubelet's plugin directory
/// name it.
pub const DRIVER_NAME: &str = "s3.csi.bucketfs.io";

/// The socket path of a `unix://` endpoint.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let Some(path) = endpoint.strip_prefix("unix://") else {
        bail!("--csi-endpoint {endpoint}: only unix:///PATH endpoints are served");
    };
    let path = Path::new(path);
    if !path.is_absolute() {
        bail!("--csi-endpoint {endpoint}: the socket path must be absolute");
    }
    Ok(path.to_path_buf())
}

/// Serves the plugin until SIGTERM or SIGINT; published volumes stay mounted.
pub fn run(args: CsiArgs) -> Result<()> {
    let socket = socket_path(&args.csi_endpoint)?;
    if args.node_id.is_empty() {
        bail!("--node-id (or KUBE_NODE_NAME) must name this node");
    }
    options::check_plugin_options(&args.mount_options)?;
    let bucketfs = match &args.bucketfs {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("finding the bucketfs binary")?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    crate::daemon::init_plain_logging();
    rt.block_on(async move {
        let volumes = volume::Volumes::open(&args.state_dir, bucketfs, args.mount_options.clone())?;
        volumes.take_charge().await?;
        let plugin = Arc::new(service::Plugin::new(args.node_id.clone(), volumes));
        service::serve(plugin, &socket, args.ready_file.as_deref()).await
    })
}
