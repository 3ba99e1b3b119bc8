use std::time::Duration;

use super::*;

fn parse(args: &[&str]) -> Result<Args, clap::Error> {
    parse_args(std::iter::once("bucketfs").chain(args.iter().copied()))
}

#[test]
fn sources_split_into_bucket_and_prefix() {
    assert_eq!(parse_source("b").unwrap(), ("b".into(), "".into()));
    assert_eq!(
        parse_source("b:data").unwrap(),
        ("b".into(), "data/".into())
    );
    assert_eq!(
        parse_source("b:data/x/").unwrap(),
        ("b".into(), "data/x/".into())
    );
    assert_eq!(
        parse_source("s3://b/data/").unwrap(),
        ("b".into(), "data/".into())
    );
    assert_eq!(parse_source("s3://b").unwrap(), ("b".into(), "".into()));
    assert_eq!(parse_source("s3://b/").unwrap(), ("b".into(), "".into()));
    assert!(parse_source("").is_err());
    assert!(parse_source(":x").is_err());
    assert!(parse_source("bad bucket").is_err());
}

#[test]
fn sizes_durations_and_modes_parse() {
    assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
    assert_eq!(parse_size("2G").unwrap(), 2 << 30);
    assert_eq!(parse_size("65536").unwrap(), 65536);
    assert_eq!(parse_size("64k").unwrap(), 64 << 10);
    assert!(parse_size("lots").is_err());
    assert!(parse_size("99999999999TiB").is_err());
    assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    assert!(parse_duration("soon").is_err());
    // Values that would overflow (u64 seconds * 3600, or Instant + ttl later) are refused here.
    assert!(parse_duration("18446744073709551615h").is_err());
    assert!(parse_duration("5124095576030431h").is_err());
    assert!(parse_duration("18446744073709551615").is_err());
    assert!(parse_duration("87600h").is_ok());
    assert_eq!(parse_mode("644").unwrap(), 0o644);
    assert_eq!(parse_mode("0o755").unwrap(), 0o755);
    assert!(parse_mode("999").is_err());
    assert!(parse_mode("17777").is_err());
}

#[test]
fn mount_options_become_flags() {
    let args = parse(&[
        "bucket:pre",
        "/mnt/x",
        "-o",
        "ro,allow_other,region=eu-west-1,dev,suid,_netdev,x-systemd.automount,metadata_ttl=2s",
    ])
    .unwrap();
    assert!(args.read_only && args.allow_other);
    assert_eq!(args.region.as_deref(), Some("eu-west-1"));
    assert_eq!(args.metadata_ttl, Some(Duration::from_secs(2)));
    let config = args.into_config().unwrap();
    assert_eq!(config.store.bucket, "bucket");
    assert_eq!(config.fs.prefix, "pre/");
    assert!(config.fs.read_only);
    assert_eq!(config.fs.negative_ttl, Duration::from_secs(2));
    assert_eq!(config.daemon.fs_name, "bucket:pre/");
}

#[test]
fn flags_and_options_may_repeat() {
    let args = parse(&[
        "b",
        "/m",
        "--read-only",
        "-o",
        "ro",
        "-o",
        "cache-size=64MiB",
    ])
    .unwrap();
    assert!(args.read_only);
    assert_eq!(args.cache_size, 64 << 20);
}

#[test]
fn unknown_or_bad_options_are_errors() {
    let err = parse(&["b", "/m", "-o", "nonsense"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown mount option 'nonsense'"), "{err}");
    assert!(parse(&["b", "/m", "--no-such-flag"]).is_err());
    assert!(parse(&["b", "/m", "-o", "uid=abc"]).is_err());
    let small = parse(&["b", "/m", "--cache-size", "1MiB"]).unwrap();
    assert!(small.into_config().unwrap_err().contains("too small"));
    let level = parse(&["b", "/m", "--log-level", "=[bad"]).unwrap();
    assert!(level.into_config().is_err());
}

#[test]
fn defaults_are_documented_values() {
    let config = parse(&["b", "relative/mnt"])
        .unwrap()
        .into_config()
        .unwrap();
    assert!(config.daemon.mountpoint.is_absolute());
    assert_eq!(config.fs.file_mode, 0o644);
    assert_eq!(config.fs.dir_mode, 0o755);
    assert_eq!(config.fs.metadata_ttl, Duration::from_secs(5));
    assert_eq!(config.cache.budget, 256 << 20, "half the budget for reads");
    assert_eq!(config.upload.budget, 256 << 20, "half for write buffers");
    assert_eq!(config.upload.part_size, 8 << 20);
    assert_eq!(config.upload.concurrency, 4);
    assert!(!config.fs.read_only && !config.daemon.foreground);
    assert_eq!(config.daemon.fs_name, "b");
}

#[test]
fn part_sizes_that_cannot_reach_five_tib_are_refused() {
    let err = parse(&["b", "/mnt", "--part-size", "5MiB"])
        .unwrap()
        .into_config()
        .unwrap_err();
    assert!(err.contains("6MiB"), "{err}");
    let err = parse(&["b", "/mnt", "-o", "part_size=64MiB,cache_size=128MiB"])
        .unwrap()
        .into_config()
        .unwrap_err();
    assert!(err.contains("--cache-size"), "{err}");
    let ok = parse(&[
        "b",
        "/mnt",
        "-o",
        "staging_dir=/tmp/x,staging_dir_limit=1GiB",
    ])
    .unwrap()
    .into_config()
    .unwrap();
    assert_eq!(ok.upload.staging_limit, 1 << 30);
    assert_eq!(ok.upload.staging_dir, std::path::Path::new("/tmp/x"));
    assert!(ok.daemon.notices.is_empty());
}

#[test]
fn cache_dir_is_a_deprecated_spelling_of_staging_dir() {
    let old = parse(&["b", "/mnt", "-o", "cache_dir=/tmp/x,cache_dir_limit=1GiB"])
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!(old.upload.staging_limit, 1 << 30);
    assert_eq!(old.upload.staging_dir, std::path::Path::new("/tmp/x"));
    assert!(
        old.daemon.notices[0].contains("--staging-dir"),
        "{:?}",
        old.daemon.notices
    );
    assert!(
        old.cache.disk.as_ref().is_none_or(|d| d.by_default),
        "the old flag never names the disk cache"
    );
    let both = parse(&[
        "b",
        "/mnt",
        "--cache-dir",
        "/tmp/old",
        "--staging-dir",
        "/tmp/new",
    ])
    .unwrap()
    .into_config()
    .unwrap();
    assert_eq!(both.upload.staging_dir, std::path::Path::new("/tmp/new"));
}

#[test]
fn metadata_cache_options() {
    let default = parse(&["b", "/m"]).unwrap().into_config().unwrap();
    assert!(default.cache.metadata.is_none(), "off by default");
    let on = parse(&["b", "/m", "-o", "metadata_cache=/var/cache/m"])
        .unwrap()
        .into_config()
        .unwrap();
    let meta = on.cache.metadata.unwrap();
    assert_eq!(meta.dir, std::path::Path::new("/var/cache/m"));
    assert_eq!(meta.size, 512 << 20);
    let sized = parse(&[
        "b",
        "/m",
        "--metadata-cache",
        "/c",
        "--metadata-cache-size",
        "1GiB",
    ])
    .unwrap()
    .into_config()
    .unwrap();
    assert_eq!(sized.cache.metadata.unwrap().size, 1 << 30);
    assert!(
        parse(&["b", "/m", "--metadata-cache-size", "1GiB"]).is_err(),
        "a size without a directory"
    );
}

#[test]
fn metadata_memory_option() {
    let default = parse(&["b", "/m"]).unwrap().into_config().unwrap();
    assert_eq!(default.fs.metadata_memory, 256 << 20);
    let set = parse(&["b", "/m", "-o", "metadata_memory=1GiB"])
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!(set.fs.metadata_memory, 1 << 30);
    let small = parse(&["b", "/m", "--metadata-memory", "4096"]);
    assert!(small.is_err(), "below 1MiB");
}

#[test]
fn disk_cache_options() {
    // On by default, in the user's cache directory, sized from free space.
    let default = parse(&["b", "/m"]).unwrap().into_config().unwrap();
    let disk = default.cache.disk.expect("on by default");
    assert!(disk.by_default);
    assert!(
        !disk.passthrough,
        "no passthrough (ETXTBSY for writers) by default"
    );
    assert!(
        disk.size > 0 && disk.size <= DISK_CACHE_CAP,
        "{}",
        disk.size
    );
    let off = parse(&["b", "/m", "-o", "no_disk_cache"])
        .unwrap()
        .into_config()
        .unwrap();
    assert!(off.cache.disk.is_none(), "--no-disk-cache turns it off");
    assert!(parse(&["b", "/m", "--no-disk-cache", "--disk-cache", "/c"]).is_err());
    assert!(parse(&["b", "/m", "--no-disk-cache", "--disk-cache-size", "1GiB"]).is_err());
    let on = parse(&[
        "b",
        "/m",
        "-o",
        "disk_cache=/var/cache/b,disk_cache_size=64MiB",
    ])
    .unwrap()
    .into_config()
    .unwrap();
    let disk = on.cache.disk.unwrap();
    assert_eq!(disk.dir, std::path::Path::new("/var/cache/b"));
    assert_eq!(disk.size, 64 << 20);
    assert!(disk.passthrough && !disk.by_default);
    let plain = parse(&["b", "/m", "--disk-cache", "/c", "--no-passthrough"])
        .unwrap()
        .into_config()
        .unwrap();
    assert!(!plain.cache.disk.unwrap().passthrough);
    // A size alone sizes the default directory.
    let sized = parse(&["b", "/m", "--disk-cache-size", "1GiB"])
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!(sized.cache.disk.unwrap().size, 1 << 30);
}

#[test]
fn the_default_disk_cache_is_the_users_cache_directory_sized_from_free_space() {
    let os = |s: &str| Some(std::ffi::OsString::from(s));
    assert_eq!(
        default_disk_cache_dir(0, os("/x"), os("/root")),
        Some("/var/cache/bucketfs".into())
    );
    assert_eq!(
        default_disk_cache_dir(1000, os("/home/u/.xdg"), os("/home/u")),
        Some("/home/u/.xdg/bucketfs".into())
    );
    assert_eq!(
        default_disk_cache_dir(1000, os("relative"), os("/home/u")),
        Some("/home/u/.cache/bucketfs".into()),
        "a relative XDG_CACHE_HOME is ignored, as the spec says"
    );
    assert_eq!(default_disk_cache_dir(1000, None, None), None);
    assert_eq!(default_disk_cache_dir(1000, None, os("")), None);
    assert_eq!(default_disk_cache_size(Some(8 << 30)), 2 << 30);
    assert_eq!(default_disk_cache_size(Some(1 << 40)), DISK_CACHE_CAP);
    assert_eq!(default_disk_cache_size(None), DISK_CACHE_CAP);
}

#[test]
fn xattr_and_content_type_options() {
    let config = parse(&["b", "/m"]).unwrap().into_config().unwrap();
    assert!(config.fs.xattr, "extended attributes are served by default");
    assert_eq!(config.fs.content_type_default, "application/octet-stream");
    let args = parse(&["b", "/m", "-o", "noxattr,content_type_default=text/plain"]).unwrap();
    let config = args.into_config().unwrap();
    assert!(!config.fs.xattr);
    assert_eq!(config.fs.content_type_default, "text/plain");
    assert!(parse(&["b", "/m", "--content-type-default", "nonsense"]).is_err());
    assert!(parse(&["b", "/m", "--content-type-default", "text/html\n"]).is_err());
}

#[test]
fn notifications_lengthen_the_default_ttl_and_keep_a_short_fallback() {
    use crate::config::NotifySource;
    let url = "https://sqs.eu-west-1.amazonaws.com/123456789012/events";
    let config = parse(&["b", "/m", "-o", &format!("notify_queue={url}")])
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!(config.notify.source, NotifySource::Queue(url.into()));
    assert_eq!(config.fs.metadata_ttl, Duration::from_secs(3600));
    assert_eq!(config.fs.negative_ttl, Duration::from_secs(3600));
    assert_eq!(
        config.notify.fallback_ttls,
        (Duration::from_secs(5), Duration::from_secs(5))
    );
    let given = parse(&["b", "/m", "--notify-queue", url, "--metadata-ttl", "2s"])
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!(
        given.fs.metadata_ttl,
        Duration::from_secs(2),
        "the flag wins"
    );
    assert_eq!(given.notify.fallback_ttls.0, Duration::from_secs(2));
    let topic = "arn:aws:sns:us-east-1:123456789012:events";
    let config = parse(&["b", "/m", "--notify-topic", topic])
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!(config.notify.source, NotifySource::Topic(topic.into()));
    let off = parse(&["b", "/m"]).unwrap().into_config().unwrap();
    assert_eq!(off.notify.source, NotifySource::Off);
}

#[test]
fn bad_notification_options_are_refused() {
    let err = |argv: &[&str]| parse(argv).unwrap().into_config().unwrap_err();
    assert!(err(&["b", "/m", "--notify-queue", "events"]).contains("SQS queue URL"));
    assert!(err(&["b", "/m", "--notify-queue", "https://sqs.amazonaws.com/"]).contains("SQS"));
    assert!(err(&["b", "/m", "--notify-topic", "arn:aws:sqs:r:1:q"]).contains("SNS topic ARN"));
    assert!(parse(&[
        "b",
        "/m",
        "--notify-queue",
        "https://q/1/x",
        "--notify-topic",
        "arn:aws:sns:r:1:t"
    ])
    .is_err());
}

#[test]
fn version_names_the_commit() {
    let err = Args::try_parse_from(["bucketfs", "--version"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
    let text = err.to_string();
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    assert!(text.contains(env!("BUCKETFS_COMMIT")), "{text}");
    if std::path::Path::new(".git").exists() {
        let commit = env!("BUCKETFS_COMMIT");
        assert!(
            commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{commit}"
        );
    }
}

#[test]
fn status_is_a_command_and_a_bucket_named_status_is_s3_status() {
    let argv = |args: &[&str]| -> Vec<std::ffi::OsString> { args.iter().map(Into::into).collect() };
    assert!(is_status_command(&argv(&["bucketfs", "status"])));
    assert!(is_status_command(&argv(&["bucketfs", "status", "/mnt"])));
    assert!(!is_status_command(&argv(&[
        "bucketfs",
        "s3://status",
        "/mnt"
    ])));
    let args =
        StatusArgs::try_parse_from(["status", "--wait", "--timeout", "10m", "/mnt"]).unwrap();
    assert!(args.wait && !args.json);
    assert_eq!(args.timeout, Some(Duration::from_secs(600)));
    // --timeout only means something with --wait; --watch and --wait exclude each other.
    assert!(StatusArgs::try_parse_from(["status", "--timeout", "10m"]).is_err());
    assert!(StatusArgs::try_parse_from(["status", "--watch", "--wait"]).is_err());
}

#[test]
fn access_points_directory_buckets_and_aliases_are_sources() {
    let arn = "arn:aws:s3:eu-west-1:123456789012:accesspoint/my-ap";
    assert_eq!(parse_source(arn).unwrap(), (arn.into(), "".into()));
    assert_eq!(
        parse_source(&format!("s3://{arn}/logs/2026")).unwrap(),
        (arn.into(), "logs/2026/".into())
    );
    assert_eq!(
        parse_source(&format!("{arn}/logs/")).unwrap(),
        (arn.into(), "logs/".into())
    );
    let c = parse(&[arn, "/mnt"]).unwrap().into_config().unwrap();
    assert_eq!(c.store.region.as_deref(), Some("eu-west-1"));
    let c = parse(&[arn, "/mnt", "--region", "us-east-1"])
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!(c.store.region.as_deref(), Some("us-east-1"));
    for bad in [
        "arn:aws:s3:eu-west-1:123:accesspoint/ap",
        "arn:aws:s3:eu-west-1:123456789012:bucket/b",
        "arn:aws:sqs:eu-west-1:123456789012:accesspoint/ap",
        "arn:aws:s3:eu-west-1:123456789012:accesspoint/",
    ] {
        assert!(parse_source(bad).is_err(), "{bad}");
    }
    // A directory bucket and an access point alias are bucket names.
    for name in [
        "data--usw2-az1--x-s3",
        "my-ap-abcdefghijklmnopqrstuvwxyz12-s3alias",
    ] {
        assert_eq!(parse_source(name).unwrap(), (name.into(), "".into()));
    }
}

#[test]
fn proxies_and_ca_bundles_are_checked() {
    assert_eq!(
        parse_proxy("http://proxy:3128").unwrap(),
        "http://proxy:3128"
    );
    assert!(parse_proxy("https://proxy.example.com").is_ok());
    assert!(parse_proxy("proxy:3128").is_err());
    assert!(parse_proxy("http://").is_err());
    let err = parse_proxy("http://me:secret@proxy:3128").unwrap_err();
    assert!(
        err.contains("HTTPS_PROXY") && !err.contains("secret"),
        "{err}"
    );
    let c = parse(&[
        "b",
        "/mnt",
        "-o",
        "https_proxy=http://p:1,no_proxy=.internal",
    ])
    .unwrap()
    .into_config()
    .unwrap();
    assert_eq!(c.store.network.https_proxy.as_deref(), Some("http://p:1"));
    assert_eq!(c.store.network.no_proxy.as_deref(), Some(".internal"));
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("x.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let err = parse(&["b", "/mnt", "--ca-bundle", not_pem.to_str().unwrap()])
        .unwrap()
        .into_config()
        .unwrap_err();
    assert!(err.contains("no PEM certificate"), "{err}");
}

#[test]
fn metrics_address_as_flag_and_option() {
    let c = parse(&["b", "/mnt", "-o", "metrics_addr=127.0.0.1:9100"])
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!(
        c.daemon.metrics_addr,
        Some("127.0.0.1:9100".parse().unwrap())
    );
    let c = parse(&["b", "/mnt"]).unwrap().into_config().unwrap();
    assert_eq!(c.daemon.metrics_addr, None);
    assert!(parse(&["b", "/mnt", "--metrics-addr", "localhost"]).is_err());
}

#[test]
fn completions_and_the_manual_page_need_no_mount() {
    let a = parse(&["--completions", "bash"]).unwrap();
    assert_eq!(a.completions, Some(clap_complete::Shell::Bash));
    let script = String::from_utf8(completions(clap_complete::Shell::Bash)).unwrap();
    assert!(script.contains("--metrics-addr"), "{script}");
    assert!(parse(&["--man-page"]).unwrap().man_page);
    let page = String::from_utf8(man_page().unwrap()).unwrap();
    assert!(page.contains(".TH bucketfs 8"), "{page}");
    assert!(page.contains("fuse.bucketfs"), "{page}");
    // Alone only; and a mount still needs its bucket and mount point.
    assert!(parse(&["--man-page", "b", "/mnt"]).is_err());
    assert!(parse(&["b"]).is_err());
    assert!(parse(&["-o", "man_page", "b", "/mnt"]).is_err());
}

#[test]
fn roots_staging_directory_is_out_of_world_writable_var_tmp() {
    assert_eq!(
        default_staging_dir(0),
        std::path::Path::new("/var/cache/bucketfs/staging")
    );
    assert_eq!(
        default_staging_dir(1000),
        std::path::Path::new("/var/tmp/bucketfs-1000")
    );
}

#[test]
fn metrics_on_a_non_loopback_address_warn_that_they_have_no_authentication() {
    for (addr, warned) in [
        ("127.0.0.1:9100", false),
        ("[::1]:9100", false),
        ("0.0.0.0:9100", true),
        ("[::]:9100", true),
        ("10.1.2.3:9100", true),
    ] {
        let c = parse(&["b", "/mnt", "--metrics-addr", addr])
            .unwrap()
            .into_config()
            .unwrap();
        let notices = c.daemon.notices.join("\n");
        assert_eq!(
            notices.contains("no authentication"),
            warned,
            "{addr}: {notices}"
        );
    }
}

#[test]
fn csi_options_mix_the_plugins_and_the_volumes() {
    let argv: Vec<std::ffi::OsString> = [
        "bucketfs",
        "csi",
        "--csi-endpoint",
        "unix:///csi/csi.sock",
        "--region",
        "eu-west-1",
        "--node-id=n1",
        "--force-path-style",
        "--",
        "--notify-topic",
        "arn:aws:sns:eu-west-1:1:t",
    ]
    .iter()
    .map(Into::into)
    .collect();
    let args = CsiArgs::parse_argv(&argv).unwrap();
    assert_eq!(args.csi_endpoint, "unix:///csi/csi.sock");
    assert_eq!(args.node_id, "n1");
    assert_eq!(
        args.mount_options,
        [
            "--region",
            "eu-west-1",
            "--force-path-style",
            "--notify-topic",
            "arn:aws:sns:eu-west-1:1:t"
        ]
    );
}
