use super::client::{bucketfs_mounts, MountEntry};
use super::*;

#[test]
fn sockets_are_named_by_mount_point_and_fit_a_socket_address() {
    let dir = socket_dir(1000, Some(Path::new("/run/user/1000")));
    assert_eq!(dir, Path::new("/run/user/1000/bucketfs"));
    assert_eq!(socket_dir(0, None), Path::new("/run/bucketfs"));
    assert_eq!(socket_dir(7, None), Path::new("/tmp/bucketfs-7"));
    let long = PathBuf::from(format!("/mnt/{}", "x".repeat(4000)));
    let a = socket_path(&dir, &long);
    assert!(a.as_os_str().len() < 108, "{}", a.display());
    assert_eq!(a, socket_path(&dir, &long), "stable");
    assert_ne!(a, socket_path(&dir, Path::new("/mnt/y")));
}

#[test]
fn bucketfs_mounts_are_found_in_proc_mounts_with_their_owner() {
    let text = "\
proc /proc proc rw,nosuid 0 0
data /mnt/data fuse.bucketfs rw,nosuid,nodev,relatime,user_id=1000,group_id=1000 0 0
other /mnt/other fuse.sshfs rw,user_id=0,group_id=0 0 0
b:p /mnt/with\\040space fuse.bucketfs ro,user_id=0,group_id=0 0 0
";
    assert_eq!(
        bucketfs_mounts(text),
        vec![
            MountEntry {
                path: "/mnt/data".into(),
                uid: 1000
            },
            MountEntry {
                path: "/mnt/with space".into(),
                uid: 0
            },
        ]
    );
}

#[test]
fn mount_paths_resolve_the_parent_and_leave_the_last_component_alone() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::create_dir(real.join("a")).unwrap();
    std::os::unix::fs::symlink(real.join("a"), real.join("link")).unwrap();
    assert_eq!(mount_path(&real.join("a/../b")), real.join("b"));
    assert_eq!(mount_path(&real.join("link/m")), real.join("a/m"));
    // The last component is not followed (it may be the mount, or an automount point).
    assert_eq!(mount_path(&real.join("link")), real.join("link"));
}
