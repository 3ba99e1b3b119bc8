//! moto's server on 127.0.0.1, for what SeaweedFS does not keep (user metadata on `dir/`
//! markers) and does not have (S3 event notifications to SQS and SNS). One server per `Moto`;
//! it accepts any credentials and is killed on drop.

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
        Self::start_with(None)
    }

    /// Starts a server on https with the certificate and key of `tls` (PEM files), whose CA
    /// (`tls.ca`) the test client trusts.
    pub fn start_tls(tls: &super::tls::TestCa) -> Moto {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&super::tls::TestCa>) -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let log = std::fs::File::create(super::run_dir().join(format!("moto-{port}.log"))).unwrap();
        let mut args = vec![
            "-H".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        if let Some(tls) = tls {
            args.extend([
                "-c".to_string(),
                tls.server_cert.display().to_string(),
                "-k".to_string(),
                tls.server_key.display().to_string(),
            ]);
        }
        let child = super::server_command(&moto_binary(), &args, log)
            .spawn()
            .expect("start moto_server");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{port}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = match tls {
            Some(tls) => rt.block_on(super::make_client_trusting(&endpoint, &tls.ca)),
            None => rt.block_on(super::make_client(&endpoint)),
        };
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

/// An SDK configuration for moto: test credentials, us-east-1, every service at `endpoint`.
fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    let creds = aws_sdk_s3::config::Credentials::new(
        super::ACCESS_KEY,
        super::SECRET_KEY,
        None,
        None,
        "test",
    );
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(creds))
        .build()
}

impl Moto {
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&sdk_config(&self.endpoint))
    }

    pub fn sns(&self) -> aws_sdk_sns::Client {
        aws_sdk_sns::Client::new(&sdk_config(&self.endpoint))
    }

    /// The environment a mount needs to reach moto's SQS and SNS (the SDKs' own settings).
    pub fn service_env(&self) -> [(&'static str, &str); 2] {
        [
            ("AWS_ENDPOINT_URL_SQS", self.endpoint.as_str()),
            ("AWS_ENDPOINT_URL_SNS", self.endpoint.as_str()),
        ]
    }

    /// Creates queue `name`; returns its URL and ARN.
    pub fn create_queue(&self, name: &str) -> (String, String) {
        let sqs = self.sqs();
        self.rt.block_on(async {
            let url = sqs
                .create_queue()
                .queue_name(name)
                .send()
                .await
                .expect("create queue")
                .queue_url()
                .unwrap()
                .to_string();
            let arn = sqs
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .send()
                .await
                .expect("queue attributes")
                .attributes()
                .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
                .cloned()
                .unwrap();
            (url, arn)
        })
    }

    /// Messages in queue `url`, visible or in flight.
    pub fn queued(&self, url: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .rt
            .block_on(
                self.sqs()
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(A::ApproximateNumberOfMessages)
                    .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
                    .send(),
            )
            .expect("queue attributes");
        let attrs = out.attributes().cloned().unwrap_or_default();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .filter_map(|a| attrs.get(a).and_then(|v| v.parse::<u64>().ok()))
        .sum()
    }

    /// Sends `bucket`'s object-created and object-removed events to the queues and topics
    /// given by ARN.
    pub fn notify_bucket(&self, bucket: &str, queues: &[&str], topics: &[&str]) {
        use aws_sdk_s3::types::{
            Event, NotificationConfiguration, QueueConfiguration, TopicConfiguration,
        };
        let events = [Event::S3ObjectCreated, Event::S3ObjectRemoved];
        let mut config = NotificationConfiguration::builder();
        for (i, arn) in queues.iter().enumerate() {
            config = config.queue_configurations(
                QueueConfiguration::builder()
                    .id(format!("q{i}"))
                    .queue_arn(*arn)
                    .set_events(Some(events.to_vec()))
                    .build()
                    .unwrap(),
            );
        }
        for (i, arn) in topics.iter().enumerate() {
            config = config.topic_configurations(
                TopicConfiguration::builder()
                    .id(format!("t{i}"))
                    .topic_arn(*arn)
                    .set_events(Some(events.to_vec()))
                    .build()
                    .unwrap(),
            );
        }
        self.rt
            .block_on(
                self.client
                    .put_bucket_notification_configuration()
                    .bucket(bucket)
                    .notification_configuration(config.build())
                    .send(),
            )
            .expect("bucket notification configuration");
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(body.to_vec().into())
                    .send(),
            )
            .unwrap_or_else(|e| panic!("put {key}: {:?}", e.into_service_error()));
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        self.rt
            .block_on(self.client.delete_object().bucket(bucket).key(key).send())
            .unwrap_or_else(|e| panic!("delete {key}: {:?}", e.into_service_error()));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
