//! Names the commit the binary was built from, for `bucketfs --version`, and compiles the
//! CSI specification's proto (src/csi/csi.proto) for the node plugin, without protoc.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown commit".to_string());
    println!("cargo:rustc-env=BUCKETFS_COMMIT={commit}");
    // A new commit moves HEAD or the branch it names.
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-changed=src/csi/csi.proto");
    let descriptors = match protox::compile(["csi.proto"], ["src/csi"]) {
        Ok(descriptors) => descriptors,
        Err(e) => panic!("src/csi/csi.proto: {e}"),
    };
    if let Err(e) = tonic_prost_build::configure().compile_fds(descriptors) {
        panic!("generating the CSI code: {e}");
    }
}
