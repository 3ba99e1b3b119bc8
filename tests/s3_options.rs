//! S3 as people deploy it: a customer key (SSE-C, against SeaweedFS, which enforces it), KMS
//! encryption and storage classes (against moto, which records them), requester pays and the
//! expected owner (headers seen by the counting proxy), archived objects (moto's GLACIER), and
//! options that are refused with a clear message.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use common::moto::Moto;
use common::tls;
use common::*;

const MIB: usize = 1 << 20;

/// A private key file holding `key` in base64.
fn key_file(dir: &Path, key: &[u8; 32]) -> std::path::PathBuf {
    let path = dir.join("sse-c.key");
    let text = base64::engine::general_purpose::STANDARD.encode(key);
    fs::write(&path, format!("{text}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Keeps the first of the key-MD5 headers SeaweedFS repeats, which the SDK refuses to parse.
#[derive(Debug)]
struct FirstKeyMd5;

impl aws_smithy_runtime_api::client::interceptors::Intercept for FirstKeyMd5 {
    fn name(&self) -> &'static str {
        "FirstKeyMd5"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let name = "x-amz-server-side-encryption-customer-key-md5";
        let headers = context.response_mut().headers_mut();
        if let Some(first) = headers.get(name).map(str::to_string) {
            headers.remove(name);
            headers.insert(name, first);
        }
        Ok(())
    }
}

/// HEAD of `key` with the customer key: its SSE-C algorithm, or the error.
fn sse_c_head(bucket: &str, key: &str, customer: &[u8; 32]) -> Result<Option<String>, String> {
    let s = server();
    let b64 = base64::engine::general_purpose::STANDARD;
    let md5 = {
        use md5::Digest;
        b64.encode(md5::Md5::digest(customer))
    };
    s.rt.block_on(
        s.client
            .head_object()
            .bucket(bucket)
            .key(key)
            .sse_customer_algorithm("AES256")
            .sse_customer_key(b64.encode(customer))
            .sse_customer_key_md5(md5)
            .customize()
            .interceptor(FirstKeyMd5)
            .send(),
    )
    .map(|out| out.sse_customer_algorithm().map(str::to_string))
    .map_err(|e| format!("{:?}", e.into_service_error()))
}

/// GET of `key` without any key.
fn plain_get(bucket: &str, key: &str) -> Result<Vec<u8>, String> {
    let s = server();
    s.rt.block_on(async {
        let out = s
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| format!("{:?}", e.into_service_error()))?;
        Ok(out.body.collect().await.unwrap().into_bytes().to_vec())
    })
}

#[test]
fn a_customer_key_encrypts_every_object_and_only_it_reads_them() {
    let b = Bucket::new("ssec");
    let dir = tempfile::tempdir().unwrap();
    let customer: [u8; 32] = pseudo_random(32, 40).try_into().unwrap();
    let key_path = key_file(dir.path(), &customer);
    let key_arg = key_path.to_str().unwrap();
    let small = b"a secret".to_vec();
    let big = pseudo_random(20 * MIB, 41);
    {
        // Trace logging: the SDK's most talkative level must not print the key either.
        let m = Mount::new(
            &b.name,
            "ssec",
            &["--sse-c-key-file", key_arg, "-o", "log_level=trace"],
        );
        fs::write(m.path.join("small.txt"), &small).unwrap();
        fs::write(m.path.join("big.bin"), &big).unwrap();
        fs::write(m.path.join("renamed-from.txt"), b"moved").unwrap();
        fs::rename(m.path.join("renamed-from.txt"), m.path.join("moved.txt")).unwrap();
        fs::set_permissions(m.path.join("small.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        let log = fs::read_to_string(&m.log).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        // The SDK's trace events are capped at debug (they print requests and their headers).
        assert!(log.contains("DEBUG"), "the log is not at trace level");
        assert!(
            !log.contains(&b64.encode(customer)),
            "the key is in the log"
        );
        let md5 = {
            use md5::Digest;
            b64.encode(md5::Md5::digest(customer))
        };
        assert!(!log.contains(&md5), "the key's MD5 is in the log");
    }
    // Every object is encrypted with the key (a small PUT, a multipart upload, a rename's copy,
    // a chmod's copy): S3 refuses to read them without it.
    for key in ["small.txt", "big.bin", "moved.txt"] {
        assert_eq!(
            sse_c_head(&b.name, key, &customer),
            Ok(Some("AES256".to_string())),
            "{key}"
        );
        let refused = plain_get(&b.name, key);
        assert!(refused.is_err(), "{key} was readable without the key");
    }
    assert!(b.keys().iter().all(|k| k != "renamed-from.txt"));
    // A new mount with the key reads them all back (keeping them in a disk cache it asks for).
    let cache = run_dir().join("ssec-disk-cache");
    let cache_arg = cache.to_str().unwrap();
    let m = Mount::new(
        &b.name,
        "ssec-again",
        &["--sse-c-key-file", key_arg, "--disk-cache", cache_arg],
    );
    assert_eq!(fs::read(m.path.join("small.txt")).unwrap(), small);
    assert_eq!(
        sha256(&fs::read(m.path.join("big.bin")).unwrap()),
        sha256(&big)
    );
    assert_eq!(fs::read(m.path.join("moved.txt")).unwrap(), b"moved");
    // Without the key the names list, but the objects cannot be read (S3 refuses even a HEAD).
    let bare = Mount::new(&b.name, "ssec-bare", &[]);
    let mut names: Vec<String> = fs::read_dir(&bare.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["big.bin", "moved.txt", "small.txt"]);
    assert!(fs::read(bare.path.join("big.bin")).is_err());
    // Nor through the disk cache the keyed mount filled: its blocks are keyed by the key too.
    let shared = Mount::new(&b.name, "ssec-shared", &["--disk-cache", cache_arg]);
    // Listed first, as above: the listing's attributes spare the failing HEAD.
    assert_eq!(fs::read_dir(&shared.path).unwrap().count(), 3);
    for key in ["small.txt", "big.bin", "moved.txt"] {
        assert!(
            fs::read(shared.path.join(key)).is_err(),
            "{key} read from the disk cache without the key"
        );
    }
}

#[test]
fn kms_encryption_and_the_storage_class_go_on_every_new_object_and_copy() {
    let moto = Moto::start();
    let bucket = "kms";
    moto.create_bucket(bucket);
    let m = Mount::with_env(
        bucket,
        mount_point("kms"),
        &[
            "--endpoint-url",
            &moto.endpoint,
            "--sse",
            "aws:kms",
            "--sse-kms-key-id",
            "alias/bucketfs-test",
            "-o",
            "storage_class=standard_ia",
        ],
        &moto.service_env(),
    );
    fs::write(m.path.join("small.txt"), b"small").unwrap();
    fs::write(m.path.join("big.bin"), pseudo_random(20 * MIB, 42)).unwrap();
    fs::write(m.path.join("from.txt"), b"to be moved").unwrap();
    fs::rename(m.path.join("from.txt"), m.path.join("moved.txt")).unwrap();
    fs::set_permissions(m.path.join("small.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    for key in ["small.txt", "big.bin", "moved.txt"] {
        let head = moto
            .rt
            .block_on(moto.client.head_object().bucket(bucket).key(key).send())
            .unwrap_or_else(|e| panic!("head {key}: {:?}", e.into_service_error()));
        assert_eq!(
            head.server_side_encryption().map(|s| s.as_str()),
            Some("aws:kms"),
            "{key}"
        );
        assert!(
            head.ssekms_key_id()
                .is_some_and(|id| id.contains("bucketfs-test")),
            "{key}: {:?}",
            head.ssekms_key_id()
        );
        assert_eq!(
            head.storage_class().map(|s| s.as_str()),
            Some("STANDARD_IA"),
            "{key}"
        );
    }
    assert_eq!(fs::read(m.path.join("moved.txt")).unwrap(), b"to be moved");
    drop(m);
    // S3's own keys (SSE-S3).
    let m = Mount::with_env(
        bucket,
        mount_point("sse-s3"),
        &["--endpoint-url", &moto.endpoint, "--sse", "AES256"],
        &moto.service_env(),
    );
    fs::write(m.path.join("s3-keys.txt"), b"sse-s3").unwrap();
    let head = moto
        .rt
        .block_on(
            moto.client
                .head_object()
                .bucket(bucket)
                .key("s3-keys.txt")
                .send(),
        )
        .unwrap();
    assert_eq!(
        head.server_side_encryption().map(|s| s.as_str()),
        Some("AES256")
    );
}

#[test]
fn requester_pays_and_the_expected_owner_are_on_every_request() {
    let b = Bucket::new("payer");
    b.put("there.txt", "there");
    let p = proxy();
    let m = Mount::new(
        &b.name,
        "payer",
        &[
            "--endpoint-url",
            &p.endpoint,
            "--requester-pays",
            "-o",
            "expected_bucket_owner=123456789012",
        ],
    );
    fs::write(m.path.join("new.txt"), b"new").unwrap();
    assert_eq!(fs::read(m.path.join("there.txt")).unwrap(), b"there");
    assert_eq!(fs::read_dir(&m.path).unwrap().count(), 2);
    fs::rename(m.path.join("new.txt"), m.path.join("renamed.txt")).unwrap();
    fs::remove_file(m.path.join("renamed.txt")).unwrap();
    let heads = p.heads();
    assert!(heads.len() >= 6, "{heads:?}");
    for head in &heads {
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("\r\nx-amz-request-payer: requester"),
            "no request-payer header on {head}"
        );
        assert!(
            lower.contains("\r\nx-amz-expected-bucket-owner: 123456789012"),
            "no expected-owner header on {head}"
        );
    }
}

#[test]
fn archived_objects_list_with_their_size_and_read_with_eacces_naming_the_restore() {
    let moto = Moto::start();
    let bucket = "archive";
    moto.create_bucket(bucket);
    let body = pseudo_random(100_000, 43);
    for (key, class) in [
        ("cold.bin", aws_sdk_s3::types::StorageClass::Glacier),
        ("colder.bin", aws_sdk_s3::types::StorageClass::DeepArchive),
    ] {
        moto.rt
            .block_on(
                moto.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .storage_class(class)
                    .body(ByteStream::from(body.clone()))
                    .send(),
            )
            .unwrap();
    }
    moto.put(bucket, "warm.bin", &body);
    let m = Mount::with_env(
        bucket,
        mount_point("archive"),
        &["--endpoint-url", &moto.endpoint],
        &moto.service_env(),
    );
    for key in ["cold.bin", "colder.bin", "warm.bin"] {
        assert_eq!(
            fs::metadata(m.path.join(key)).unwrap().len(),
            body.len() as u64
        );
    }
    assert_eq!(fs::read(m.path.join("warm.bin")).unwrap(), body);
    for key in ["cold.bin", "colder.bin"] {
        let err = fs::read(m.path.join(key)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{key}: {err}");
    }
    let log = fs::read_to_string(&m.log).unwrap();
    // One warning per read, though the kernel asks twice (read-ahead, then the read itself).
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("cold.bin"))
        .collect();
    assert_eq!(lines.len(), 1, "one line warns of the archive: {log}");
    assert!(lines[0].contains("restore-object"), "{}", lines[0]);
    // Restored, it reads (from a new open: the old handle's version is the same object).
    moto.rt
        .block_on(
            moto.client
                .restore_object()
                .bucket(bucket)
                .key("cold.bin")
                .restore_request(aws_sdk_s3::types::RestoreRequest::builder().days(1).build())
                .send(),
        )
        .unwrap();
    assert_eq!(fs::read(m.path.join("cold.bin")).unwrap(), body);
    assert!(lines[0].contains("InvalidObjectState"), "{}", lines[0]);
}

#[test]
fn bad_s3_options_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let open_key = dir.path().join("open.key");
    fs::write(&open_key, [1u8; 32]).unwrap();
    fs::set_permissions(&open_key, fs::Permissions::from_mode(0o644)).unwrap();
    let open_key = open_key.to_str().unwrap();
    let mnt = mount_point("bad-options");
    for (args, says) in [
        (vec!["--sse", "rot13"], "--sse \"rot13\" is not known"),
        (
            vec!["--sse", "AES256", "--sse-kms-key-id", "k"],
            "--sse-kms-key-id goes with --sse aws:kms",
        ),
        (
            vec!["--storage-class", "COLD"],
            "is not an S3 storage class",
        ),
        (
            vec!["--expected-bucket-owner", "me"],
            "is not an AWS account id",
        ),
        (vec!["--sse-c-key-file", open_key], "chmod 600"),
        (
            vec!["--sse-c-key-file", "/nonexistent/key"],
            "--sse-c-key-file /nonexistent/key",
        ),
    ] {
        let out = bucketfs_command("some-bucket", &mnt, &args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!is_mounted(&mnt));
    }
}

#[test]
fn the_region_of_a_bucket_elsewhere_is_found_and_a_wrong_one_corrected() {
    use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
    let moto = Moto::start();
    let config = CreateBucketConfiguration::builder()
        .location_constraint(BucketLocationConstraint::EuWest1)
        .build();
    moto.rt
        .block_on(
            moto.client
                .create_bucket()
                .bucket("far")
                .create_bucket_configuration(config)
                .send(),
        )
        .unwrap();
    moto.put("far", "hello.txt", b"from far");
    for (name, extra, says) in [
        ("region-none", vec![], "region eu-west-1 (the bucket's)"),
        (
            "region-wrong",
            vec!["--region", "us-west-2"],
            "is in eu-west-1, not in us-west-2 as configured: using eu-west-1",
        ),
    ] {
        let path = mount_point(name);
        let log = path.with_extension("log");
        let mut args = vec![
            "--endpoint-url",
            moto.endpoint.as_str(),
            "--log-file",
            log.to_str().unwrap(),
        ];
        args.extend(extra);
        // No region in the environment or a profile: only the bucket can say.
        let out = bucketfs_command("far", &path, &args)
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = Mount {
            path,
            log,
            source: "far".into(),
        };
        let text = fs::read_to_string(&m.log).unwrap();
        assert!(text.contains(says), "{name}: {text}");
        assert_eq!(fs::read(m.path.join("hello.txt")).unwrap(), b"from far");
        let status = std::process::Command::new(bucketfs_bin())
            .args(["status", "--json"])
            .arg(&m.path)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(v["region"], "eu-west-1", "{name}: {v}");
    }
}

#[test]
fn proxies_from_the_environment_or_the_options_carry_every_request() {
    let b = Bucket::new("proxied");
    b.put("hello.txt", "through the proxy");
    let p = proxy();
    let proxy_url = p.endpoint.clone();
    let option = format!("http_proxy={proxy_url}");
    // The endpoint is the server itself: only the proxy settings send requests to the proxy.
    let cases = [
        (
            "proxy-env",
            vec![],
            vec![("HTTP_PROXY", proxy_url.as_str())],
            true,
        ),
        ("proxy-option", vec!["-o", option.as_str()], vec![], true),
        (
            "proxy-bypassed",
            vec![],
            vec![
                ("HTTP_PROXY", proxy_url.as_str()),
                ("NO_PROXY", "127.0.0.1"),
            ],
            false,
        ),
    ];
    for (name, extra, env, proxied) in cases {
        let before = p.counts().total();
        let m = Mount::with_env(&b.name, mount_point(name), &extra, &env);
        assert_eq!(
            fs::read(m.path.join("hello.txt")).unwrap(),
            b"through the proxy"
        );
        fs::write(m.path.join(format!("{name}.txt")), name).unwrap();
        let through = p.counts().total() - before;
        if proxied {
            // HeadBucket, lookups, the GET and the PUT at least.
            assert!(through >= 4, "{name}: {through} requests through the proxy");
        } else {
            assert_eq!(through, 0, "{name}: NO_PROXY was not honoured");
        }
    }
    let proxied_head = p
        .heads()
        .into_iter()
        .find(|h| h.starts_with("GET http://"))
        .is_some();
    assert!(proxied_head, "requests through a proxy name the whole URL");
}

#[test]
fn a_private_ca_is_trusted_through_ca_bundle_or_aws_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::TestCa::new(dir.path());
    let moto = Moto::start_tls(&ca);
    moto.create_bucket("private");
    moto.put("private", "hello.txt", b"over TLS");
    let ca_path = ca.ca.to_str().unwrap().to_string();
    let path = mount_point("tls-untrusted");
    // The system's CAs do not know this one: the mount is refused, saying why.
    let out = bucketfs_command("private", &path, &["--endpoint-url", &moto.endpoint])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown CA was trusted");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!is_mounted(&path));
    for (name, extra, env) in [
        ("tls-option", vec!["--ca-bundle", ca_path.as_str()], vec![]),
        ("tls-env", vec![], vec![("AWS_CA_BUNDLE", ca_path.as_str())]),
    ] {
        let mut args = vec!["--endpoint-url", moto.endpoint.as_str()];
        args.extend(extra);
        let m = Mount::with_env("private", mount_point(name), &args, &env);
        assert_eq!(fs::read(m.path.join("hello.txt")).unwrap(), b"over TLS");
        fs::write(m.path.join(format!("{name}.txt")), name).unwrap();
        drop(m);
        let out = moto
            .rt
            .block_on(
                moto.client
                    .get_object()
                    .bucket("private")
                    .key(format!("{name}.txt"))
                    .send(),
            )
            .unwrap();
        let body = moto.rt.block_on(out.body.collect()).unwrap().into_bytes();
        assert_eq!(&body[..], name.as_bytes());
    }
}

/// Writes `data` to `path` and fsyncs it: the commit's result.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[test]
fn a_checksum_makes_bytes_damaged_on_the_way_fail_the_commit() {
    let b = Bucket::new("checksum");
    let p = proxy();
    for checksum in ["crc32c", "crc64nvme"] {
        let m = Mount::new(
            &b.name,
            &format!("checksum-{checksum}"),
            &["--endpoint-url", &p.endpoint, "--checksum", checksum],
        );
        let log = fs::read_to_string(&m.log).unwrap();
        assert!(log.contains("checksum the server verifies"), "{log}");
        // Undamaged: a small file, one PutObject, a multipart upload; stored as written.
        for (name, len) in [("small", 100), ("one-put", 3 * MIB), ("multi", 20 * MIB)] {
            let key = format!("{checksum}-{name}");
            let data = pseudo_random(len, len as u64);
            write_synced(&m.path.join(&key), &data).unwrap();
            assert_eq!(sha256(&b.get(&key)), sha256(&data), "{key}");
        }
        // One damaged read of a PutObject's body, then of a part's: the server finds the
        // checksum wrong, the commit fails, and nothing is stored under the name.
        for (name, len) in [("bad-put", 3 * MIB), ("bad-multi", 20 * MIB)] {
            let key = format!("{checksum}-{name}");
            p.corrupt_next(1);
            let result = write_synced(&m.path.join(&key), &pseudo_random(len, 7));
            p.corrupt_next(0);
            assert!(result.is_err(), "{key}: damaged bytes were accepted");
            assert_eq!(b.size(&key), None, "{key}: stored anyway");
        }
    }
    // The control: without a checksum the same damage is stored, silently.
    let m = Mount::new(
        &b.name,
        "checksum-off",
        &["--endpoint-url", &p.endpoint, "--checksum", "off"],
    );
    let data = pseudo_random(3 * MIB, 8);
    p.corrupt_next(1);
    write_synced(&m.path.join("off.bin"), &data).unwrap();
    p.corrupt_next(0);
    assert_ne!(
        sha256(&b.get("off.bin")),
        sha256(&data),
        "the proxy damaged nothing: this test could not fail"
    );
}

/// With `--checksum crc32c` the object keeps its checksum, as the SDKs leave it: a HEAD with
/// checksum mode on returns it, for a small object and a multipart one (moto keeps them).
#[test]
fn a_checksum_is_stored_with_the_object() {
    let moto = common::moto::Moto::start();
    let bucket = "stored-checksum";
    moto.create_bucket(bucket);
    let m = Mount::new(
        bucket,
        "stored-checksum",
        &["--endpoint-url", &moto.endpoint, "--checksum", "crc32c"],
    );
    std::fs::write(m.path.join("small"), b"123456789").unwrap();
    let big = common::pseudo_random(12 << 20, 51);
    std::fs::write(m.path.join("multipart"), &big).unwrap();
    for (key, expected) in [("small", Some("4waSgw==")), ("multipart", None)] {
        let head = moto
            .rt
            .block_on(
                moto.client
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                    .send(),
            )
            .unwrap();
        let stored = head.checksum_crc32_c();
        assert!(stored.is_some(), "{key}: no stored CRC-32C: {head:?}");
        if let Some(expected) = expected {
            assert_eq!(stored, Some(expected), "{key}");
        }
    }
}
