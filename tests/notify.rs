//! Many hosts, one bucket: mounts kept coherent by S3 event notifications through SQS (and
//! SNS), against moto's server, which implements S3 notifications, SQS and SNS. Every mount
//! here trusts its metadata for an hour, so only the events can show it a change in time.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::moto::Moto;
use common::{bucketfs_bin, eventually, mount_point, within, Mount};

/// The promise: a change shows on another mount within this.
const VISIBLE_WITHIN: Duration = Duration::from_secs(2);

fn mount(moto: &Moto, bucket: &str, name: &str, extra: &[&str]) -> Mount {
    let mut args = vec![
        "--endpoint-url",
        moto.endpoint.as_str(),
        "--metadata-ttl",
        "1h",
    ];
    args.extend_from_slice(extra);
    Mount::with_env(bucket, mount_point(name), &args, &moto.service_env())
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn shows(dir: &Path, name: &str) -> bool {
    names(dir).iter().any(|n| n == name)
}

fn reads(path: &Path, want: &[u8]) -> bool {
    fs::read(path).is_ok_and(|got| got == want)
}

fn gone(path: &Path) -> bool {
    fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

fn log_of(m: &Mount) -> String {
    fs::read_to_string(&m.log).unwrap_or_default()
}

/// The last lines of a log, for a failure message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Asserts `cond` holds within `VISIBLE_WITHIN`, naming the step.
fn within_two_seconds(step: &str, cond: impl FnMut() -> bool) {
    let start = Instant::now();
    assert!(
        eventually(VISIBLE_WITHIN, cond),
        "{step}: not visible on the other mount within {VISIBLE_WITHIN:?}"
    );
    eprintln!("{step}: visible after {:?}", start.elapsed());
}

#[test]
fn two_mounts_see_each_others_changes_within_two_seconds() {
    let moto = Moto::start();
    let bucket = "fleet";
    moto.create_bucket(bucket);
    let (url_a, arn_a) = moto.create_queue("fleet-a");
    let (url_b, arn_b) = moto.create_queue("fleet-b");
    moto.notify_bucket(bucket, &[&arn_a, &arn_b], &[]);
    moto.put(bucket, "base.txt", b"v1");
    let a = mount(&moto, bucket, "nt-a", &["--notify-queue", &url_a]);
    let b = mount(&moto, bucket, "nt-b", &["--notify-queue", &url_b]);
    // The control: the same mount without notifications stays stale for its TTL.
    let control = mount(&moto, bucket, "nt-control", &[]);
    for m in [&b, &control] {
        assert_eq!(names(&m.path), vec!["base.txt"]);
        assert!(reads(&m.path.join("base.txt"), b"v1"));
    }

    moto.put(bucket, "new.txt", b"new object");
    within_two_seconds("a new object", || {
        reads(&b.path.join("new.txt"), b"new object")
    });
    moto.put(bucket, "base.txt", b"version two, longer");
    within_two_seconds("an overwrite", || {
        reads(&b.path.join("base.txt"), b"version two, longer")
    });
    moto.delete(bucket, "new.txt");
    within_two_seconds("a delete", || gone(&b.path.join("new.txt")));
    assert!(
        !shows(&control.path, "new.txt") && gone(&control.path.join("new.txt")),
        "the control saw a change without notifications: this test could not fail"
    );

    // Through mount A: a file written, renamed and deleted; a directory made and removed.
    fs::write(a.path.join("from-a.txt"), b"written on A").unwrap();
    within_two_seconds("a file written on A", || {
        reads(&b.path.join("from-a.txt"), b"written on A")
    });
    fs::rename(a.path.join("from-a.txt"), a.path.join("renamed.txt")).unwrap();
    within_two_seconds("a rename on A", || {
        gone(&b.path.join("from-a.txt")) && reads(&b.path.join("renamed.txt"), b"written on A")
    });
    fs::remove_file(a.path.join("renamed.txt")).unwrap();
    within_two_seconds("a delete on A", || gone(&b.path.join("renamed.txt")));
    fs::create_dir(a.path.join("made")).unwrap();
    within_two_seconds("mkdir on A", || b.path.join("made").is_dir());
    fs::remove_dir(a.path.join("made")).unwrap();
    within_two_seconds("rmdir on A", || gone(&b.path.join("made")));

    // A new implicit directory, and a key that S3 events spell encoded.
    moto.put(bucket, "deep/er/x.txt", b"deep");
    within_two_seconds("a key below new prefixes", || {
        reads(&b.path.join("deep/er/x.txt"), b"deep")
    });
    let odd = "sp ace+plus é.txt";
    moto.put(bucket, odd, b"odd name");
    within_two_seconds("a key with a space, + and unicode", || {
        reads(&b.path.join(odd), b"odd name")
    });
    moto.delete(bucket, "deep/er/x.txt");
    within_two_seconds("an implicit directory's last key deleted", || {
        gone(&b.path.join("deep"))
    });

    // A's own commits came back as events too: they changed nothing there.
    assert!(log_of(&a).contains("notifications on"), "{}", log_of(&a));
    assert!(!shows(&control.path, odd), "the control is stale");

    // `bucketfs status` shows the events received and how late the last one came.
    let out = Command::new(bucketfs_bin())
        .args(["status", "--json"])
        .arg(&b.path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = &v["notifications"];
    assert_eq!(n["queue"], url_b.as_str(), "{v}");
    assert!(n["events"].as_u64().unwrap() >= 10, "{v}");
    let lag = n["last_lag_seconds"]
        .as_f64()
        .expect("moto's events carry eventTime");
    assert!((0.0..30.0).contains(&lag), "{v}");
    assert_eq!(n["failing"], false, "{v}");
    let out = Command::new(bucketfs_bin())
        .args(["status", "--json"])
        .arg(&control.path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["notifications"].is_null(), "{v}");
}

#[test]
fn a_topic_fans_out_to_a_queue_per_mount_removed_at_unmount() {
    let moto = Moto::start();
    let bucket = "topical";
    moto.create_bucket(bucket);
    let sns = moto.sns();
    let topic = moto
        .rt
        .block_on(sns.create_topic().name("bucket-events").send())
        .expect("create topic")
        .topic_arn()
        .unwrap()
        .to_string();
    moto.notify_bucket(bucket, &[], &[&topic]);
    let mounts: Vec<Mount> = (0..3)
        .map(|i| {
            mount(
                &moto,
                bucket,
                &format!("nt-topic{i}"),
                &["--notify-topic", &topic],
            )
        })
        .collect();
    for m in &mounts {
        assert!(names(&m.path).is_empty());
    }
    let queues = || -> Vec<String> {
        moto.rt
            .block_on(moto.sqs().list_queues().send())
            .expect("list queues")
            .queue_urls()
            .iter()
            .filter(|u| u.contains("bucketfs-"))
            .cloned()
            .collect()
    };
    let subscriptions = || {
        moto.rt
            .block_on(sns.list_subscriptions_by_topic().topic_arn(&topic).send())
            .expect("list subscriptions")
            .subscriptions()
            .len()
    };
    assert_eq!(queues().len(), 3, "a queue per mount: {:?}", queues());
    assert_eq!(subscriptions(), 3);

    moto.put(bucket, "fanned.txt", b"to every host");
    // moto (5.1) accepts a topic in a bucket's notification configuration but publishes no
    // S3 event to it: the test publishes the event S3 would have sent.
    moto.rt
        .block_on(
            sns.publish()
                .topic_arn(&topic)
                .message(s3_event(bucket, "ObjectCreated:Put", "fanned.txt"))
                .send(),
        )
        .expect("publish");
    for m in &mounts {
        within_two_seconds("an object, through the topic", || {
            reads(&m.path.join("fanned.txt"), b"to every host")
        });
    }
    for m in &mounts {
        assert!(m.unmount());
        assert!(
            log_of(m).contains("unsubscribed and deleted"),
            "{}",
            log_of(m)
        );
    }
    assert!(queues().is_empty(), "queues left: {:?}", queues());
    assert_eq!(subscriptions(), 0);
}

#[test]
fn a_queue_that_is_missing_at_start_fails_the_mount_with_one_clear_line() {
    let moto = Moto::start();
    moto.create_bucket("noqueue");
    let missing = format!("{}/123456789012/no-such-queue", moto.endpoint);
    let path = mount_point("nt-missing");
    let out = common::bucketfs_command(
        "noqueue",
        &path,
        &["--endpoint-url", &moto.endpoint, "--notify-queue", &missing],
    )
    .envs(moto.service_env())
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("does not exist") && stderr.contains("--notify-queue"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!common::is_mounted(&path));
}

/// Sends raw bodies to `url`, ten to a batch, sixteen batches at a time.
fn send_bodies(moto: &Moto, url: &str, bodies: Vec<String>) {
    use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
    use futures::stream::{self, StreamExt};
    let sqs = moto.sqs();
    let batches: Vec<Vec<String>> = bodies.chunks(10).map(<[String]>::to_vec).collect();
    moto.rt.block_on(
        stream::iter(batches)
            .map(|batch| {
                let entries = batch
                    .into_iter()
                    .enumerate()
                    .map(|(i, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(body)
                            .build()
                            .unwrap()
                    })
                    .collect();
                sqs.send_message_batch()
                    .queue_url(url)
                    .set_entries(Some(entries))
                    .send()
            })
            .buffer_unordered(16)
            .for_each(|sent| async move {
                sent.expect("send message batch");
            }),
    );
}

fn s3_event(bucket: &str, name: &str, key: &str) -> String {
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": name,
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": "0"}}
    }]})
    .to_string()
}

#[test]
fn bad_messages_are_skipped_and_a_storm_does_not_stall_the_mount() {
    let moto = Moto::start();
    let bucket = "stormy";
    moto.create_bucket(bucket);
    let (url, arn) = moto.create_queue("stormy");
    // Seeded before events are on: moto's receive slows with the depth of its queue.
    for i in 0..1000 {
        moto.put(bucket, &format!("big/f{i:04}"), b"x");
    }
    moto.notify_bucket(bucket, &[&arn], &[]);
    let m = mount(&moto, bucket, "nt-storm", &["--notify-queue", &url]);
    let big = m.path.join("big");
    assert_eq!(names(&big).len(), 1000);

    // A malformed body and another bucket's event are logged, deleted, and change nothing.
    send_bodies(
        &moto,
        &url,
        vec![
            "this is not JSON".into(),
            s3_event("other-bucket", "ObjectRemoved:Delete", "big/f0001"),
        ],
    );
    assert!(
        eventually(Duration::from_secs(10), || moto.queued(&url) == 0),
        "{} messages left; {}",
        moto.queued(&url),
        tail(&log_of(&m))
    );
    assert!(log_of(&m).contains("skipping a message"), "{}", log_of(&m));
    assert!(big.join("f0001").exists());

    // 10,000 events for other keys while `ls -l` of 1,000 entries runs. S3 sends a record a
    // message; here 50 records share one, as moto's receive takes ~0.5 s per call once its
    // queue holds a thousand messages, which would make this a test of moto.
    let storm: Vec<String> = (0..200)
        .map(|m| {
            let records: Vec<serde_json::Value> = (0..50)
                .map(|r| {
                    let key = format!("storm/k{}", m * 50 + r);
                    serde_json::from_str::<serde_json::Value>(&s3_event(
                        bucket,
                        "ObjectCreated:Put",
                        &key,
                    ))
                    .unwrap()["Records"][0]
                        .clone()
                })
                .collect();
            serde_json::json!({ "Records": records }).to_string()
        })
        .collect();
    send_bodies(&moto, &url, storm);
    let mut listed = 0;
    let mut slowest = Duration::ZERO;
    while moto.queued(&url) > 0 {
        let big = big.clone();
        let start = Instant::now();
        let out = within(
            Duration::from_secs(10),
            "ls -l during the storm",
            move || common::sh(&format!("ls -l {} | wc -l", big.display())),
        );
        slowest = slowest.max(start.elapsed());
        assert_eq!(out.trim(), "1001", "total line and 1,000 entries");
        listed += 1;
    }
    eprintln!("{listed} listings during the storm, slowest {slowest:?}");
    assert!(listed > 0, "the storm was over before a listing ran");

    // The mount still follows changes after it.
    moto.put(bucket, "after.txt", b"still coherent");
    within_two_seconds("a change after the storm", || {
        reads(&m.path.join("after.txt"), b"still coherent")
    });
}

#[test]
fn a_queue_deleted_while_mounted_falls_back_to_the_short_ttl() {
    let moto = Moto::start();
    let bucket = "fallback";
    moto.create_bucket(bucket);
    let (url, arn) = moto.create_queue("fallback");
    moto.notify_bucket(bucket, &[&arn], &[]);
    let m = mount(&moto, bucket, "nt-fallback", &["--notify-queue", &url]);
    assert!(names(&m.path).is_empty());
    moto.rt
        .block_on(moto.sqs().delete_queue().queue_url(&url).send())
        .expect("delete queue");
    moto.put(bucket, "later.txt", b"seen by TTL");
    // The current long poll (20 s) ends, the next receive fails, the TTL falls to 5 s.
    assert!(
        eventually(Duration::from_secs(40), || reads(
            &m.path.join("later.txt"),
            b"seen by TTL"
        )),
        "the mount did not fall back to its short TTL: {}",
        log_of(&m)
    );
    let log = log_of(&m);
    assert_eq!(
        log.matches("notifications failed").count(),
        1,
        "logged once: {log}"
    );
}

/// How long the backlog of a kept queue may take to show after a remount: a message the last
/// receive of the previous mount was waiting for when it stopped comes back after the queue's
/// visibility timeout (30 s).
const BACKLOG_WITHIN: Duration = Duration::from_secs(60);

/// `--metadata-cache` with a queue that outlives the mount (`--notify-queue`): after a clean
/// unmount and a remount, the saved listings are trusted without being listed again (the queue
/// holds every change made meanwhile), and the changes made while unmounted show as the queue's
/// backlog is read. After a crash nothing is proven: the saved listings are listed again.
#[test]
fn a_kept_queue_proves_the_saved_listings_across_a_remount() {
    let moto = Moto::start();
    let bucket = "kept";
    moto.create_bucket(bucket);
    let (url, arn) = moto.create_queue("kept-q");
    moto.notify_bucket(bucket, &[&arn], &[]);
    for d in 0..20 {
        for f in 0..3 {
            moto.put(bucket, &format!("d{d:02}/f{f}"), b"x");
        }
    }
    let proxy = common::proxy::Proxy::start(moto.endpoint.trim_start_matches("http://"));
    let snap = common::run_dir().join("kept-snapshot");
    let _ = fs::remove_dir_all(&snap);
    let args = [
        "--endpoint-url",
        proxy.endpoint.as_str(),
        "--metadata-ttl",
        "1h",
        "--notify-queue",
        url.as_str(),
        "--metadata-cache",
        snap.to_str().unwrap(),
    ];
    let mount = || Mount::with_env(bucket, mount_point("kept"), &args, &moto.service_env());
    let lists = || {
        proxy
            .counts()
            .list
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let walk = |m: &Mount| -> Vec<Vec<String>> {
        assert_eq!(names(&m.path).len(), 20);
        (0..20)
            .map(|d| names(&m.path.join(format!("d{d:02}"))))
            .collect()
    };
    {
        let m = mount();
        assert_eq!(walk(&m)[0], vec!["f0", "f1", "f2"]);
        // The events of the seeding are read (and change nothing) before the unmount.
        assert!(eventually(Duration::from_secs(20), || moto.queued(&url) == 0));
        std::thread::sleep(Duration::from_secs(2));
    }

    // Changed while unmounted: the queue keeps the events.
    moto.put(bucket, "d01/new", b"n");
    moto.delete(bucket, "d02/f0");
    assert!(
        eventually(Duration::from_secs(10), || moto.queued(&url) == 2),
        "{} queued",
        moto.queued(&url)
    );
    let m = mount();
    let before = lists();
    let seen = walk(&m);
    assert_eq!(seen[5], vec!["f0", "f1", "f2"]);
    assert!(
        eventually(BACKLOG_WITHIN, || shows(&m.path.join("d01"), "new")),
        "a key added while unmounted: {:?}\n{}\n{}",
        names(&m.path.join("d01")),
        common::status_json(&m.path),
        log_of(&m)
    );
    assert!(eventually(BACKLOG_WITHIN, || gone(&m.path.join("d02/f0"))));
    std::thread::sleep(Duration::from_secs(2));
    let after = lists() - before;
    eprintln!("{after} LISTs after a remount proven by the queue");
    // Not proven, the 21 directories would be revalidated; proven, only those the events
    // touched (d01, d02 and their parent) are listed, some perhaps twice (an event that
    // arrives while a listing runs keeps that listing out of the cache).
    assert!(
        after <= 8,
        "{after} LISTs after a remount proven by the queue"
    );
    let log = log_of(&m);
    assert!(log.contains("are trusted"), "{}", tail(&log));
    // Every directory answered from the snapshot is proven, none listed again. How many are
    // answered so depends on when the backlog's event lands: once it has dropped d01's saved
    // listing, the opendir of d01 starts one flat listing of the tree (walk.rs), which
    // answers the directories after it fresh (a loaded full run saw 2 answered from the
    // snapshot and 3 LISTs in all).
    let v = common::status_json(&m.path);
    let snapshot = &v["snapshot"];
    let proven = snapshot["proven"].as_u64().unwrap_or(0);
    assert!(proven >= 1, "{v}");
    assert_eq!(snapshot["served"].as_u64(), Some(proven), "{v}");
    assert_eq!(snapshot["revalidated"].as_u64(), Some(0), "{v}");

    // A crash proves nothing: every saved listing is listed again.
    let pid = m.daemon_pid().expect("daemon pid");
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    assert!(common::wait_gone(pid, Duration::from_secs(10)));
    m.unmount();
    drop(m);
    let m = mount();
    let _ = walk(&m);
    // Every directory answered from the snapshot is listed again (the walked tree with one
    // flat listing), none proven.
    let snapshot = || common::status_json(&m.path)["snapshot"].clone();
    assert!(
        eventually(Duration::from_secs(20), || {
            snapshot()["revalidated"].as_u64().unwrap_or(0) >= 20
        }),
        "{}",
        snapshot()
    );
    assert_eq!(snapshot()["proven"], 0, "{}", snapshot());
}
