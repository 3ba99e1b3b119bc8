//! The SQS queue events arrive in (aws-sdk-sqs), and for `--notify-topic` the queue a mount
//! makes for itself and subscribes to an SNS topic (aws-sdk-sns).
//!
//! Non-obvious problems:
//! 1. SQS and SNS share the S3 client's credentials and region, but not its endpoint: each
//!    finds its own the SDK's way (`AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL_SNS`, a profile's
//!    `services` section), as every AWS SDK does.
//! 2. A queue of one's own is named after the host and the mount (bucket, prefix, mount
//!    point), so a mount that crashed and comes back finds and reuses its queue: CreateQueue
//!    and Subscribe both return what exists when asked for the same again.
//! 3. SNS may send to the queue only with a queue policy that lets the topic do so; the
//!    subscription asks for raw delivery (the body is S3's event), and wrapped envelopes are
//!    understood too (event.rs) in case a topic's owner changes that.

use async_trait::async_trait;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};

use super::{EventQueue, Message, QueueError};

/// The long poll of one receive: SQS's longest, so an idle mount sends 3 requests a minute.
const WAIT_SECONDS: i32 = 20;
/// Messages per receive: SQS's most.
const BATCH: i32 = 10;
/// SQS queue names are at most 80 characters.
const MAX_QUEUE_NAME: usize = 80;

/// What went wrong in a call, with the service's error code when it sent one.
fn describe<E, R>(what: &str, err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        Some(e) => format!(
            "{what}: {} ({})",
            e.message().unwrap_or("no message"),
            e.code().unwrap_or("no error code")
        ),
        None => format!("{what}: {}", DisplayErrorContext(err)),
    }
}

/// True for the error codes of a queue that does not exist.
fn is_missing<E: ProvideErrorMetadata>(e: &E) -> bool {
    matches!(
        e.code(),
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist")
    )
}

/// An SQS queue receiving the bucket's events.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    /// The queue at `url`, checked: a queue that is missing or forbidden is an error that
    /// says what to fix.
    pub async fn open(shared: &aws_config::SdkConfig, url: &str) -> Result<Self, String> {
        let queue = Self {
            client: aws_sdk_sqs::Client::new(shared),
            url: url.to_string(),
        };
        queue.arn().await?;
        Ok(queue)
    }

    /// How long the queue keeps a message (its MessageRetentionPeriod).
    pub async fn retention(&self) -> Result<std::time::Duration, String> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::MessageRetentionPeriod)
            .send()
            .await
            .map_err(|e| describe(&format!("cannot read the retention of {}", self.url), &e))?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::MessageRetentionPeriod))
            .and_then(|s| s.parse::<u64>().ok())
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| format!("notification queue {} says no retention", self.url))
    }

    /// The queue's ARN (GetQueueAttributes, which also proves it exists and may be read).
    async fn arn(&self) -> Result<String, String> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(s) if is_missing(s) => format!(
                    "notification queue {} does not exist: check --notify-queue (and the region)",
                    self.url
                ),
                Some(s) if s.code().is_some_and(|c| c.contains("AccessDenied")) => format!(
                    "access to notification queue {} denied: the credentials need \
                     sqs:GetQueueAttributes, sqs:ReceiveMessage and sqs:DeleteMessage on it",
                    self.url
                ),
                _ => describe(&format!("cannot use notification queue {}", self.url), &e),
            })?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| format!("notification queue {} has no ARN", self.url))
    }
}

#[async_trait]
impl EventQueue for SqsQueue {
    async fn receive(&self) -> Result<Vec<Message>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .wait_time_seconds(WAIT_SECONDS)
            .max_number_of_messages(BATCH)
            .send()
            .await
            .map_err(|e| QueueError(describe(&format!("receive from {}", self.url), &e)))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(Message {
                    receipt: m.receipt_handle()?.to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                })
            })
            .collect())
    }

    async fn delete(&self, receipts: &[String]) -> Result<(), QueueError> {
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(i, receipt)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .map_err(|e| QueueError(format!("delete batch: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| QueueError(describe(&format!("delete from {}", self.url), &e)))?;
        match out.failed().first() {
            None => Ok(()),
            Some(f) => Err(QueueError(format!(
                "delete from {}: {} of {} messages failed ({}: {})",
                self.url,
                out.failed().len(),
                receipts.len(),
                f.code(),
                f.message().unwrap_or("no message")
            ))),
        }
    }

    fn name(&self) -> &str {
        &self.url
    }
}

/// A queue this mount made and subscribed to an SNS topic; `remove` undoes both.
#[derive(Debug)]
pub struct Subscription {
    sns: aws_sdk_sns::Client,
    queue: SqsQueue,
    arn: String,
}

/// The name of this mount's own queue (see 2.): `bucketfs-HOST-HASH`, where the hash covers
/// the bucket, prefix and mount point.
pub fn queue_name(host: &str, mount: &str) -> String {
    let hash = crate::fs::inode::path_hash(mount);
    let tail = format!("-{hash:016x}");
    let host: String = host
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
            _ => '-',
        })
        .take(MAX_QUEUE_NAME - "bucketfs-".len() - tail.len())
        .collect();
    format!("bucketfs-{host}{tail}")
}

/// The queue policy that lets `topic` send to the queue `queue_arn`.
fn policy(queue_arn: &str, topic: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "bucketfs-notify",
            "Effect": "Allow",
            "Principal": {"Service": "sns.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": topic}}
        }]
    })
    .to_string()
}

impl Subscription {
    /// Makes (or finds) the queue `name`, lets `topic` send to it and subscribes it.
    pub async fn create(
        shared: &aws_config::SdkConfig,
        topic: &str,
        name: &str,
    ) -> Result<Self, String> {
        let client = aws_sdk_sqs::Client::new(shared);
        let created = client
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| describe(&format!("cannot create notification queue {name}"), &e))?;
        let url = created
            .queue_url()
            .ok_or_else(|| format!("creating queue {name} returned no URL"))?;
        let queue = SqsQueue {
            client,
            url: url.to_string(),
        };
        let sns = aws_sdk_sns::Client::new(shared);
        match Self::subscribe(&queue, &sns, topic).await {
            Ok(arn) => Ok(Self { sns, queue, arn }),
            Err(e) => {
                let _ = queue
                    .client
                    .delete_queue()
                    .queue_url(&queue.url)
                    .send()
                    .await;
                Err(e)
            }
        }
    }

    async fn subscribe(
        queue: &SqsQueue,
        sns: &aws_sdk_sns::Client,
        topic: &str,
    ) -> Result<String, String> {
        let arn = queue.arn().await?;
        queue
            .client
            .set_queue_attributes()
            .queue_url(&queue.url)
            .attributes(QueueAttributeName::Policy, policy(&arn, topic))
            .send()
            .await
            .map_err(|e| describe(&format!("cannot set the policy of {}", queue.url), &e))?;
        let out = sns
            .subscribe()
            .topic_arn(topic)
            .protocol("sqs")
            .endpoint(&arn)
            .attributes("RawMessageDelivery", "true")
            .return_subscription_arn(true)
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(s) if s.code() == Some("NotFound") => format!(
                    "notification topic {topic} does not exist: check --notify-topic (and the region)"
                ),
                _ => describe(&format!("cannot subscribe to notification topic {topic}"), &e),
            })?;
        out.subscription_arn()
            .map(str::to_string)
            .ok_or_else(|| format!("subscribing to {topic} returned no subscription"))
    }

    /// The queue events arrive in.
    pub fn queue(&self) -> &SqsQueue {
        &self.queue
    }

    /// Unsubscribes the queue and deletes it.
    pub async fn remove(&self) -> Result<(), String> {
        self.sns
            .unsubscribe()
            .subscription_arn(&self.arn)
            .send()
            .await
            .map_err(|e| describe(&format!("cannot unsubscribe {}", self.arn), &e))?;
        self.queue
            .client
            .delete_queue()
            .queue_url(&self.queue.url)
            .send()
            .await
            .map_err(|e| describe(&format!("cannot delete queue {}", self.queue.url), &e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_queue_names_are_valid_and_stable() {
        let a = queue_name("web-1.example.com", "bucket:pfx/@/mnt/data");
        assert_eq!(a, queue_name("web-1.example.com", "bucket:pfx/@/mnt/data"));
        assert!(a.starts_with("bucketfs-web-1-example-com-"), "{a}");
        assert_ne!(a, queue_name("web-1.example.com", "bucket:pfx/@/mnt/other"));
        let long = queue_name(&"h".repeat(200), "m");
        assert!(long.len() <= MAX_QUEUE_NAME, "{}", long.len());
        assert!(long
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn the_policy_lets_only_the_topic_send() {
        let p: serde_json::Value =
            serde_json::from_str(&policy("arn:aws:sqs:r:1:q", "arn:aws:sns:r:1:t")).unwrap();
        let statement = &p["Statement"][0];
        assert_eq!(statement["Action"], "sqs:SendMessage");
        assert_eq!(statement["Resource"], "arn:aws:sqs:r:1:q");
        assert_eq!(
            statement["Condition"]["ArnEquals"]["aws:SourceArn"],
            "arn:aws:sns:r:1:t"
        );
    }
}
