//! The volumes this node publishes: one bucketfs daemon per volume, mounted in the plugin's
//! directory, bind-mounted at each target path (mod.rs, 1. and 2.).
//!
//! Layout of `--state-dir` (the plugin's own, mode 0700, checked like the daemon's):
//! `volumes/<sha256 of the volume id>.json`, the record (volume id, spec, daemon pid, targets
//! with their publish parameters, never a secret), `mnt/<same>/`, where the daemon mounts, and
//! `plugin.lock`, which names the plugin in charge (mod.rs, 5.).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tonic::Status;

use super::options::Spec;
use crate::owned_dir::OwnedDir;

/// How long a daemon may take to mount (it checks the bucket first).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a daemon may take to exit once its mount is gone (it finishes its uploads).
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long taking one volume's daemon over may take (the old one drains its requests first).
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(90);
/// The file a plugin locks exclusively while it takes charge and shared during each call; it
/// holds the generation of the plugin in charge (mod.rs, 5.).
const CHARGE_FILE: &str = "plugin.lock";

/// One target path of a volume, with what it was published with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Target {
    /// Bound read-only.
    pub readonly: bool,
    /// The publish's parameters but the secrets, digested (a second publish at the same
    /// target must ask the same).
    pub params: String,
}

/// A volume this node publishes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Volume {
    id: String,
    spec: Spec,
    /// The daemon serving it.
    pid: Option<u32>,
    targets: BTreeMap<PathBuf, Target>,
}

/// The volumes, their records and their daemons.
#[derive(Debug)]
pub struct Volumes {
    state: OwnedDir,
    /// This plugin's generation: its calls are refused once `CHARGE_FILE` names another.
    generation: String,
    records: OwnedDir,
    mounts: OwnedDir,
    bucketfs: PathBuf,
    plugin_args: Vec<String>,
    known: Mutex<HashMap<String, Volume>>,
    busy: Mutex<HashSet<String>>,
}

/// A call on a volume in progress; others on it get ABORTED until it is dropped. It holds
/// `CHARGE_FILE` shared, so a successor takes charge only between calls.
pub struct Busy<'a> {
    volumes: &'a Volumes,
    id: String,
    _charge: Option<Flock<std::fs::File>>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.volumes.busy.lock().remove(&self.id);
    }
}

/// The hex SHA-256 of `bytes`: a volume's file names, a publish's parameters.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn name_of(id: &str) -> String {
    sha256_hex(id.as_bytes())
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

impl Volumes {
    /// Opens the state directory; `take_charge` then takes the volumes over.
    pub fn open(state_dir: &Path, bucketfs: PathBuf, plugin_args: Vec<String>) -> Result<Self> {
        let state = OwnedDir::open_or_create(state_dir)?;
        let records = state.subdir("volumes")?;
        let mounts = state.subdir("mnt")?;
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Self {
            state,
            generation: format!("{}-{}", std::process::id(), since_epoch.as_nanos()),
            records,
            mounts,
            bucketfs,
            plugin_args,
            known: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
        })
    }

    /// Takes charge of this node's volumes (mod.rs, 2. and 5.): once a running predecessor's
    /// calls are over, names this plugin in `CHARGE_FILE` (the predecessor refuses every call
    /// after that), reads the records back against the mount table, and takes every live
    /// daemon over (`bucketfs takeover`), so that it runs under this plugin and the
    /// predecessor, its container with it, can go.
    pub async fn take_charge(&self) -> Result<()> {
        let file = self
            .state
            .open_file(CHARGE_FILE)
            .with_context(|| format!("opening {CHARGE_FILE}"))?;
        let charge = tokio::task::spawn_blocking(move || lock(file, FlockArg::LockExclusive))
            .await?
            .with_context(|| format!("locking {CHARGE_FILE}"))?;
        charge.set_len(0)?;
        std::os::unix::fs::FileExt::write_all_at(&*charge, self.generation.as_bytes(), 0)?;
        charge.sync_data()?;
        self.recover()?;
        let serving: Vec<String> = self.known.lock().keys().cloned().collect();
        for id in serving {
            self.take_over(&id).await;
        }
        drop(charge);
        Ok(())
    }

    /// Takes the daemon of volume `id` over, when its mount answers; one that cannot be taken
    /// over keeps serving where it runs (a warning says so).
    async fn take_over(&self, id: &str) {
        let mnt = self.mount_dir(id);
        if !is_mountpoint(&mnt) || !answers(&mnt).await {
            // Nothing to take: a dead daemon is replaced at the next publish.
            if let Some(volume) = self.known.lock().get_mut(id) {
                volume.pid = None;
            }
            return;
        }
        let run = tokio::process::Command::new(&self.bucketfs)
            .arg("takeover")
            .arg(&mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let failed = match tokio::time::timeout(TAKEOVER_TIMEOUT, run).await {
            Ok(Ok(out)) if out.status.success() => None,
            Ok(Ok(out)) => Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            Ok(Err(e)) => Some(format!("starting {}: {e}", self.bucketfs.display())),
            Err(_) => Some(format!("no answer within {TAKEOVER_TIMEOUT:?}")),
        };
        let pid = daemon_pid(&self.bucketfs, &mnt).await;
        let volume = {
            let mut known = self.known.lock();
            let Some(volume) = known.get_mut(id) else {
                return;
            };
            // A daemon left where it was may be in another pid namespace: its pid means
            // nothing here, and its unmount ends it all the same.
            volume.pid = if failed.is_none() { pid } else { None };
            volume.clone()
        };
        match failed {
            None => tracing::info!(volume = id, pid, "daemon taken over"),
            Some(why) => tracing::warn!(
                volume = id,
                "the daemon could not be taken over; it keeps serving where it runs, and ends with the previous plugin's container: {why}"
            ),
        }
        if let Err(e) = self.save(&volume) {
            tracing::warn!(volume = id, "{e}");
        }
    }

    fn recover(&self) -> Result<()> {
        let dir = self.records.path().to_path_buf();
        let entries = std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))?;
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let bytes = self.records.read_file(&name)?.unwrap_or_default();
            let mut volume: Volume = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!("dropping the unreadable volume record {name}: {e}");
                    self.records.remove_file(&name)?;
                    continue;
                }
            };
            if name_of(&volume.id) != stem {
                tracing::warn!("dropping the volume record {name}: it names another volume");
                self.records.remove_file(&name)?;
                continue;
            }
            volume.targets.retain(|target, _| is_mountpoint(target));
            let serving = is_mountpoint(&self.mount_dir(&volume.id));
            if !serving && volume.targets.is_empty() {
                self.records.remove_file(&name)?;
                continue;
            }
            tracing::info!(
                volume = volume.id,
                targets = volume.targets.len(),
                serving,
                "volume taken back"
            );
            self.known.lock().insert(volume.id.clone(), volume);
        }
        Ok(())
    }

    /// Marks volume `id` busy for one call; ABORTED if a call on it is in progress,
    /// UNAVAILABLE once a successor has taken charge (kubelet calls again, and reaches it).
    pub async fn begin(&self, id: &str) -> Result<Busy<'_>, Status> {
        if !self.busy.lock().insert(id.to_string()) {
            return Err(Status::aborted(format!(
                "an operation on volume {id} is in progress"
            )));
        }
        let mut busy = Busy {
            volumes: self,
            id: id.to_string(),
            _charge: None,
        };
        let file = self
            .state
            .open_file(CHARGE_FILE)
            .map_err(|e| internal(CHARGE_FILE, e))?;
        let charge = tokio::task::spawn_blocking(move || lock(file, FlockArg::LockShared))
            .await
            .map_err(|e| internal(CHARGE_FILE, e))?
            .map_err(|e| internal(CHARGE_FILE, e))?;
        let mut named = Vec::new();
        std::io::Read::read_to_end(&mut &*charge, &mut named)
            .map_err(|e| internal(CHARGE_FILE, e))?;
        if named != self.generation.as_bytes() {
            return Err(Status::unavailable(
                "a newer plugin has taken charge of this node's volumes",
            ));
        }
        busy._charge = Some(charge);
        Ok(busy)
    }

    fn mount_dir(&self, id: &str) -> PathBuf {
        self.mounts.path().join(name_of(id))
    }

    fn save(&self, volume: &Volume) -> Result<(), Status> {
        let bytes = serde_json::to_vec(volume).map_err(|e| internal("recording the volume", e))?;
        self.records
            .replace_file(&format!("{}.json", name_of(&volume.id)), &bytes)
            .map_err(|e| internal("recording the volume", e))
    }

    /// Publishes volume `id` as `spec` at `target` (the caller holds `begin(id)`).
    pub async fn publish(
        &self,
        id: &str,
        spec: Spec,
        target: &Path,
        wanted: Target,
        secrets: &HashMap<String, String>,
    ) -> Result<(), Status> {
        let known = self.known.lock().get(id).cloned();
        let mut volume = match known {
            Some(volume) if volume.spec != spec => {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is published on this node with other attributes"
                )));
            }
            Some(volume) => volume,
            None => Volume {
                id: id.to_string(),
                spec,
                pid: None,
                targets: BTreeMap::new(),
            },
        };
        if let Some(had) = volume.targets.get(target) {
            if *had != wanted {
                return Err(Status::already_exists(format!(
                    "volume {id} is published at {} with other parameters",
                    target.display()
                )));
            }
            if is_mountpoint(target) {
                return Ok(());
            }
        }
        let mnt = self.mount_dir(id);
        if is_mountpoint(&mnt) && !answers(&mnt).await {
            // Its daemon died (ENOTCONN): the dead mount goes and a new daemon serves. Targets
            // bound to the dead one stay dead until their pods are restarted.
            tracing::warn!(
                volume = id,
                "the volume's daemon is gone; mounting it again"
            );
            let dead = mnt.clone();
            let _ = tokio::task::spawn_blocking(move || detach(&dead)).await;
        }
        if !is_mountpoint(&mnt) {
            volume.pid = Some(self.start_daemon(&volume, &mnt, secrets).await?);
        }
        // Recorded before the bind, so a plugin killed in between finds it to unmount.
        volume.targets.insert(target.to_path_buf(), wanted.clone());
        self.save(&volume)?;
        self.known.lock().insert(id.to_string(), volume);
        let (source, dest) = (mnt.clone(), target.to_path_buf());
        let bound = tokio::task::spawn_blocking(move || bind(&source, &dest, wanted.readonly))
            .await
            .map_err(|e| internal("bind mount", e))?;
        if let Err(e) = bound {
            self.forget_target(id, target)?;
            // A daemon started for this publish alone does not outlive it.
            let unused = self.known.lock().get(id).map(|v| v.targets.is_empty());
            if unused == Some(true) {
                self.stop_daemon(id).await?;
            }
            let message = format!("bind mount at {}: {e}", target.display());
            return Err(if e.kind() == std::io::ErrorKind::InvalidInput {
                Status::invalid_argument(message)
            } else {
                Status::internal(message)
            });
        }
        tracing::info!(volume = id, target = %target.display(), readonly = wanted.readonly, "published");
        Ok(())
    }

    fn forget_target(&self, id: &str, target: &Path) -> Result<(), Status> {
        let volume = {
            let mut known = self.known.lock();
            let Some(volume) = known.get_mut(id) else {
                return Ok(());
            };
            volume.targets.remove(target);
            volume.clone()
        };
        self.save(&volume)
    }

    /// Starts the daemon of `volume` at `mnt`; returns its pid once the mount answers.
    async fn start_daemon(
        &self,
        volume: &Volume,
        mnt: &Path,
        secrets: &HashMap<String, String>,
    ) -> Result<u32, Status> {
        let name = name_of(&volume.id);
        self.mounts
            .subdir(&name)
            .map_err(|e| internal("the volume's mount directory", e))?;
        let mut cmd = tokio::process::Command::new(&self.bucketfs);
        cmd.args(&self.plugin_args)
            .args(&volume.spec.args)
            .arg("--allow-other")
            .arg(&volume.spec.source)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, var) in [
            ("accessKeyId", "AWS_ACCESS_KEY_ID"),
            ("secretAccessKey", "AWS_SECRET_ACCESS_KEY"),
            ("sessionToken", "AWS_SESSION_TOKEN"),
        ] {
            if let Some(value) = secrets.get(key) {
                cmd.env(var, value);
            }
        }
        if secrets.contains_key("accessKeyId") {
            // The secret's keys, not a profile of the node's.
            cmd.env_remove("AWS_PROFILE");
        }
        let child = cmd
            .spawn()
            .map_err(|e| internal(&format!("starting {}", self.bucketfs.display()), e))?;
        let out = match tokio::time::timeout(MOUNT_TIMEOUT, child.wait_with_output()).await {
            Ok(out) => out.map_err(|e| internal("the mount", e))?,
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "mounting {} took longer than {MOUNT_TIMEOUT:?}",
                    volume.spec.source
                )))
            }
        };
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let message = format!("mounting {}: {message}", volume.spec.source);
            // 2: the options were refused (the daemon's usage error).
            return Err(if out.status.code() == Some(2) {
                Status::invalid_argument(message)
            } else {
                Status::internal(message)
            });
        }
        daemon_pid(&self.bucketfs, mnt).await.ok_or_else(|| {
            Status::internal(format!("{} mounted but does not answer", mnt.display()))
        })
    }

    /// Unpublishes volume `id` at `target`; the last target unmounts the daemon (the caller
    /// holds `begin(id)`).
    pub async fn unpublish(&self, id: &str, target: &Path) -> Result<(), Status> {
        let owner = self
            .known
            .lock()
            .values()
            .find(|v| v.targets.contains_key(target))
            .map(|v| v.id.clone());
        if let Some(owner) = owner.filter(|owner| owner != id) {
            return Err(Status::invalid_argument(format!(
                "{} is a target of volume {owner}, not {id}",
                target.display()
            )));
        }
        let dest = target.to_path_buf();
        tokio::task::spawn_blocking(move || unbind(&dest))
            .await
            .map_err(|e| internal("unmount", e))?
            .map_err(|e| internal(&format!("unmounting {}", target.display()), e))?;
        let Some(mut volume) = self.known.lock().get(id).cloned() else {
            return Ok(());
        };
        volume.targets.remove(target);
        if !volume.targets.is_empty() {
            self.save(&volume)?;
            self.known.lock().insert(id.to_string(), volume);
            tracing::info!(volume = id, target = %target.display(), "unpublished");
            return Ok(());
        }
        self.stop_daemon(id).await?;
        tracing::info!(volume = id, target = %target.display(), "unpublished; daemon stopped");
        Ok(())
    }

    /// Unmounts volume `id`'s daemon, waits for it to exit, and drops its record.
    async fn stop_daemon(&self, id: &str) -> Result<(), Status> {
        let mnt = self.mount_dir(id);
        let pid = self.known.lock().get(id).and_then(|v| v.pid);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            unbind(&mnt)?;
            if let Some(pid) = pid {
                wait_exit(pid, EXIT_TIMEOUT);
            }
            Ok(())
        })
        .await
        .map_err(|e| internal("unmount", e))?
        .map_err(|e| internal("unmounting the volume's daemon", e))?;
        let name = name_of(id);
        let _ = std::fs::remove_dir(self.mounts.path().join(&name));
        self.records
            .remove_file(&format!("{name}.json"))
            .map_err(|e| internal("dropping the volume record", e))?;
        self.known.lock().remove(id);
        Ok(())
    }

    /// True when volume `id` is published here at a target other than `target`.
    pub fn has_other_target(&self, id: &str, target: &Path) -> bool {
        self.known
            .lock()
            .get(id)
            .is_some_and(|v| v.targets.keys().any(|t| t != target))
    }

    /// True when `path` is a target of volume `id` here.
    pub fn is_target(&self, id: &str, path: &Path) -> bool {
        self.known
            .lock()
            .get(id)
            .is_some_and(|v| v.targets.contains_key(path))
    }

    /// Volumes published, with their targets (for the log and the tests' figures).
    pub fn count(&self) -> (usize, usize) {
        let known = self.known.lock();
        (known.len(), known.values().map(|v| v.targets.len()).sum())
    }
}

/// The pid of the bucketfs daemon serving `mnt`, through `bucketfs status`.
async fn daemon_pid(bucketfs: &Path, mnt: &Path) -> Option<u32> {
    let out = tokio::process::Command::new(bucketfs)
        .args(["status", "--json"])
        .arg(mnt)
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    status["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// True when the mount at `mnt` answers (its daemon is alive), within a few seconds: a
/// statfs, which the kernel always asks the daemon (a stat may be answered from its cache).
async fn answers(mnt: &Path) -> bool {
    let path = mnt.to_path_buf();
    let look = tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&path).is_ok());
    matches!(
        tokio::time::timeout(Duration::from_secs(5), look).await,
        Ok(Ok(true))
    )
}

/// Detaches whatever is mounted at `path`.
fn detach(path: &Path) -> std::io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The target must be where it says: no symlink in its path (mount(2) follows them, and a
/// bind mount must not land anywhere else on the node).
fn check_no_symlink(target: &Path) -> std::io::Result<()> {
    let mut prefix = PathBuf::new();
    for part in target.components() {
        prefix.push(part);
        match std::fs::symlink_metadata(&prefix) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} is a symbolic link", prefix.display()),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Bind-mounts `source` at `target` (created if missing), read-only if asked.
fn bind(source: &Path, target: &Path, readonly: bool) -> std::io::Result<()> {
    check_no_symlink(target)?;
    std::fs::create_dir_all(target)?;
    check_no_symlink(target)?;
    let (src, dst) = (c_path(source)?, c_path(target)?);
    // SAFETY: both are NUL-terminated paths; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if readonly {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        // SAFETY: as above.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                dst.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let _ = unbind(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts `target` if it is mounted (lazily if busy) and removes the directory; what is
/// not there is fine (unpublish is idempotent).
fn unbind(target: &Path) -> std::io::Result<()> {
    if is_mountpoint(target) {
        let path = c_path(target)?;
        // SAFETY: a NUL-terminated path.
        let rc = unsafe { libc::umount2(path.as_ptr(), 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(e);
            }
            // SAFETY: as above.
            if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    match std::fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Waits up to `limit` for process `pid` (of this pid namespace) to exit. A daemon is this
/// plugin's child when the plugin is its namespace's init (a container's first process): it
/// is reaped here, or it would stay a zombie, which looks alive.
fn wait_exit(pid: u32, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    loop {
        // SAFETY: waitpid with WNOHANG and kill with signal 0 only look at process `raw`; a
        // pid that is not our child gives ECHILD.
        let alive = unsafe {
            libc::waitpid(raw, std::ptr::null_mut(), libc::WNOHANG);
            libc::kill(raw, 0) == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        };
        if !alive || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Locks `file` as `how`, waiting (and again after a signal).
fn lock(mut file: std::fs::File, how: FlockArg) -> std::io::Result<Flock<std::fs::File>> {
    loop {
        match Flock::lock(file, how) {
            Ok(locked) => return Ok(locked),
            Err((back, Errno::EINTR)) => file = back,
            Err((_, e)) => return Err(e.into()),
        }
    }
}

/// True when `path` is a mount point (in this process's mount table).
pub fn is_mountpoint(path: &Path) -> bool {
    crate::daemon::mounted_fstype(path).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_through_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let err = check_no_symlink(&dir.path().join("link/pod/mount")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        check_no_symlink(&real.join("pod/mount")).unwrap();
    }

    #[test]
    fn the_root_is_a_mount_point() {
        assert!(is_mountpoint(Path::new("/")));
        assert!(!is_mountpoint(Path::new("/no/such/mount")));
    }
}
