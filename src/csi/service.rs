//! The CSI Identity and Node services over the plugin's Unix socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tonic::{Request, Response, Status};

use super::options;
use super::proto::identity_server::{Identity, IdentityServer};
use super::proto::node_server::{Node, NodeServer};
use super::proto::node_service_capability::rpc::Type as RpcType;
use super::proto::node_service_capability::{Rpc, Type as CapabilityType};
use super::proto::volume_capability::access_mode::Mode;
use super::proto::volume_capability::AccessType;
use super::proto::volume_usage::Unit;
use super::proto::*;
use super::volume::{is_mountpoint, sha256_hex, Target, Volumes};

/// How long a stopping plugin waits for its clients' connections to end.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The plugin: this node's name and its volumes.
#[derive(Debug)]
pub struct Plugin {
    node_id: String,
    volumes: Volumes,
}

impl Plugin {
    /// A plugin for node `node_id` over `volumes`.
    pub fn new(node_id: String, volumes: Volumes) -> Self {
        Self { node_id, volumes }
    }
}

/// Serves `plugin` on `socket` until SIGTERM or SIGINT; once it listens, makes `ready` (a
/// readiness probe's file) if given.
pub async fn serve(plugin: Arc<Plugin>, socket: &Path, ready: Option<&Path>) -> Result<()> {
    // A socket left by an earlier run is replaced; anything else at the path is not.
    match std::fs::symlink_metadata(socket) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(socket)
                .with_context(|| format!("removing the old socket {}", socket.display()))?;
        }
        Ok(_) => anyhow::bail!("{} exists and is not a socket", socket.display()),
        Err(_) => {}
    }
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let ours = std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(socket)?);
    if let Some(ready) = ready {
        make_ready_file(ready)
            .with_context(|| format!("making the ready file {}", ready.display()))?;
    }
    let (volumes, targets) = plugin.volumes.count();
    tracing::info!(
        socket = %socket.display(),
        node = plugin.node_id,
        volumes,
        targets,
        "serving CSI"
    );
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let stopping = Arc::new(tokio::sync::Notify::new());
    let stop = {
        let stopping = Arc::clone(&stopping);
        async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            tracing::info!("stopping; published volumes stay mounted");
            stopping.notify_one();
        }
    };
    let server = tonic::transport::Server::builder()
        .add_service(IdentityServer::from_arc(Arc::clone(&plugin)))
        .add_service(NodeServer::from_arc(plugin))
        .serve_with_incoming_shutdown(incoming, stop);
    // A graceful stop waits for the clients' connections to end, and a client may keep an
    // idle one open (a sidecar, a successor's caller): calls under way get `STOP_GRACE`.
    let grace = async {
        stopping.notified().await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! {
        served = server => served.context("serving CSI")?,
        _ = grace => tracing::info!("connections still open after {STOP_GRACE:?}; stopping"),
    }
    // A successor's socket at the same path (mod.rs, 5.) stays.
    let still_ours = std::fs::symlink_metadata(socket)
        .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == ours);
    if still_ours {
        let _ = std::fs::remove_file(socket);
    }
    Ok(())
}

/// Makes the empty file `path` (mode 0644), or leaves one an earlier run of this user made.
/// Never through a symlink, and never writing into a file that was there: the path may be in
/// a directory others write to (`/tmp`), where a planted link would make root truncate or
/// create a file of its choosing, and a file of another user's would fake readiness.
fn make_ready_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path);
    match made {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(path)?;
            if m.file_type().is_file() && m.uid() == crate::owned_dir::euid() {
                Ok(())
            } else {
                Err(std::io::Error::other(
                    "something else is at that path (a link, or another user's file)",
                ))
            }
        }
        Err(e) => Err(e),
    }
}

#[tonic::async_trait]
impl Identity for Plugin {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: super::DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        // A node-only plugin: no controller service, volumes reachable from every node.
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}

fn required<'a>(value: &'a str, what: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    Ok(value)
}

fn absolute(path: &str, what: &str) -> Result<PathBuf, Status> {
    let path = Path::new(required(path, what)?);
    if !path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
        return Err(Status::invalid_argument(format!(
            "{what} {} must be an absolute path",
            path.display()
        )));
    }
    Ok(path.to_path_buf())
}

#[tonic::async_trait]
impl Node for Plugin {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let target = absolute(&req.target_path, "target_path")?;
        let capability = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        let mount = match &capability.access_type {
            Some(AccessType::Mount(mount)) => mount,
            Some(AccessType::Block(_)) => {
                return Err(Status::invalid_argument(
                    "block volumes are not supported: a bucket is a filesystem",
                ))
            }
            None => {
                return Err(Status::invalid_argument(
                    "volume_capability.access_type is required",
                ))
            }
        };
        if !mount.fs_type.is_empty() && mount.fs_type != "fuse.bucketfs" {
            return Err(Status::invalid_argument(format!(
                "fs_type {} is not served (a bucketfs volume is fuse.bucketfs)",
                mount.fs_type
            )));
        }
        let mode = capability
            .access_mode
            .as_ref()
            .and_then(|m| Mode::try_from(m.mode).ok())
            .filter(|m| *m != Mode::Unknown)
            .ok_or_else(|| Status::invalid_argument("volume_capability.access_mode is required"))?;
        let spec = options::spec(&options::Request {
            volume_id: id,
            context: &req.volume_context,
            mount_flags: &mount.mount_flags,
            mount_group: &mount.volume_mount_group,
        })
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let readonly =
            req.readonly || matches!(mode, Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly);
        // Every parameter but the secrets, for the idempotency rules of the specification.
        let params = {
            let mut context: Vec<_> = req.volume_context.iter().collect();
            context.sort();
            let mut flags = mount.mount_flags.clone();
            flags.sort();
            sha256_hex(
                format!(
                    "{id}\0{readonly}\0{mode:?}\0{}\0{flags:?}\0{context:?}",
                    mount.volume_mount_group
                )
                .as_bytes(),
            )
        };
        let _busy = self.volumes.begin(id).await?;
        if mode == Mode::SingleNodeSingleWriter && self.volumes.has_other_target(id, &target) {
            return Err(Status::failed_precondition(format!(
                "volume {id} is single-writer and published at another target on this node"
            )));
        }
        self.volumes
            .publish(id, spec, &target, Target { readonly, params }, &req.secrets)
            .await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let target = absolute(&req.target_path, "target_path")?;
        let _busy = self.volumes.begin(id).await?;
        self.volumes.unpublish(id, &target).await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let path = absolute(&req.volume_path, "volume_path")?;
        if !self.volumes.is_target(id, &path) || !is_mountpoint(&path) {
            return Err(Status::not_found(format!(
                "volume {id} is not published at {}",
                path.display()
            )));
        }
        let stat = tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&path))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("statfs: {e}")))?;
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let block = stat.fragment_size();
        let bytes = VolumeUsage {
            total: clamp(stat.blocks().saturating_mul(block)),
            available: clamp(stat.blocks_available().saturating_mul(block)),
            used: clamp(
                stat.blocks()
                    .saturating_sub(stat.blocks_free())
                    .saturating_mul(block),
            ),
            unit: Unit::Bytes as i32,
        };
        let inodes = VolumeUsage {
            total: clamp(stat.files()),
            available: clamp(stat.files_available()),
            used: clamp(stat.files().saturating_sub(stat.files_free())),
            unit: Unit::Inodes as i32,
        };
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage: vec![bytes, inodes],
            volume_condition: None,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let capability = |t: RpcType| NodeServiceCapability {
            r#type: Some(CapabilityType::Rpc(Rpc { r#type: t as i32 })),
        };
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                capability(RpcType::GetVolumeStats),
                capability(RpcType::VolumeMountGroup),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_file_is_never_made_through_a_link() {
        let dir = std::env::temp_dir().join(format!("bucketfs-ready-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let planted = dir.join("ready-link");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(make_ready_file(&planted).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let dangling = dir.join("ready-dangling");
        std::os::unix::fs::symlink(dir.join("made-elsewhere"), &dangling).unwrap();
        assert!(make_ready_file(&dangling).is_err());
        assert!(!dir.join("made-elsewhere").exists());
        // A fresh path, and the same path again (an earlier run's file).
        let ready = dir.join("ready");
        make_ready_file(&ready).unwrap();
        make_ready_file(&ready).unwrap();
        assert_eq!(std::fs::read(&ready).unwrap(), b"");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
