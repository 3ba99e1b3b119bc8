//! moto's S3 server on 127.0.0.1, for what SeaweedFS does not keep (user metadata on `dir/`
//! markers). One server per `Moto`; it accepts any credentials and is killed on drop.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;

pub struct Moto {
    pub endpoint: String,
    pub client: Client,
    pub rt: tokio::runtime::Runtime,
    child: Child,
}

fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BUCKETFS_MOTO") {
        return PathBuf::from(p);
    }
    let cached = super::dirs_home().join(".cache/bucketfs/moto-venv/bin/moto_server");
    assert!(
        cached.is_file(),
        "moto's `moto_server` not found: run `bash tests/run.sh` (it installs moto[server]) or set BUCKETFS_MOTO"
    );
    cached
}

impl Moto {
    /// Starts a server and waits until it answers (at most 60 s).
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let log = std::fs::File::create(super::run_dir().join(format!("moto-{port}.log"))).unwrap();
        let args = [
            "-H".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        let child = super::server_command(&moto_binary(), &args, log)
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(super::make_client(&endpoint));
        let mut moto = Moto {
            endpoint,
            client,
            rt,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while moto.rt.block_on(moto.client.list_buckets().send()).is_err() {
            let exited = moto.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "moto_server did not answer on port {port} (exit: {exited:?}); see its log in {}",
                super::run_dir().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        moto
    }

    pub fn create_bucket(&self, name: &str) {
        self.rt
            .block_on(self.client.create_bucket().bucket(name).send())
            .expect("create bucket on moto");
    }

    /// User metadata of `key`, or `None` when it does not exist.
    pub fn metadata(
        &self,
        bucket: &str,
        key: &str,
    ) -> Option<std::collections::HashMap<String, String>> {
        let out = self
            .rt
            .block_on(self.client.head_object().bucket(bucket).key(key).send())
            .ok()?;
        Some(out.metadata().cloned().unwrap_or_default())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
