//! The consumer against a queue in memory and a recording sink: order, foreign and malformed
//! messages, failures and the TTL fallback.

use parking_lot::Mutex;
use std::collections::VecDeque;

use super::*;

/// A queue in memory: each receive pops the next scripted answer (none left: an empty one).
#[derive(Debug, Default)]
struct ScriptedQueue {
    answers: Mutex<VecDeque<Result<Vec<Message>, QueueError>>>,
    deleted: Mutex<Vec<String>>,
}

#[async_trait]
impl EventQueue for ScriptedQueue {
    async fn receive(&self) -> Result<Vec<Message>, QueueError> {
        let next = self.answers.lock().pop_front();
        match next {
            Some(answer) => answer,
            None => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(Vec::new())
            }
        }
    }

    async fn delete(&self, receipts: &[String]) -> Result<(), QueueError> {
        self.deleted.lock().extend(receipts.iter().cloned());
        Ok(())
    }

    fn name(&self) -> &str {
        "scripted"
    }
}

#[derive(Default)]
struct Recorder {
    changes: Mutex<Vec<(String, Elsewhere)>>,
    ttls: Mutex<Vec<Duration>>,
}

impl Sink for Recorder {
    fn changed(&self, key: &str, change: &Elsewhere) -> bool {
        self.changes.lock().push((key.to_string(), change.clone()));
        true
    }

    fn set_ttls(&self, ttl: Duration, _negative_ttl: Duration) {
        self.ttls.lock().push(ttl);
    }
}

const TTLS: Ttls = Ttls {
    pushed: (Duration::from_secs(3600), Duration::from_secs(3600)),
    fallback: (Duration::from_secs(5), Duration::from_secs(5)),
};

fn record(bucket: &str, name: &str, key: &str, sequencer: Option<&str>) -> serde_json::Value {
    let mut object = serde_json::json!({"key": key, "eTag": "e1"});
    if let Some(s) = sequencer {
        object["sequencer"] = s.into();
    }
    serde_json::json!({"eventName": name, "s3": {"bucket": {"name": bucket}, "object": object}})
}

fn message(receipt: &str, records: Vec<serde_json::Value>) -> Message {
    Message {
        receipt: receipt.into(),
        body: serde_json::json!({ "Records": records }).to_string(),
    }
}

fn consumer(queue: Arc<ScriptedQueue>) -> (Consumer, Arc<Recorder>) {
    let sink = Arc::new(Recorder::default());
    let consumer = Consumer::new(queue, Arc::clone(&sink) as Arc<dyn Sink>, "b", TTLS);
    (consumer, sink)
}

#[tokio::test]
async fn older_repeated_and_foreign_records_are_skipped_and_every_message_deleted() {
    let queue = Arc::new(ScriptedQueue::default());
    let (mut c, sink) = consumer(Arc::clone(&queue));
    let batch = vec![
        message(
            "r1",
            vec![
                record("b", "ObjectCreated:Put", "k", Some("0B")),
                // Older, then the same again: both dropped.
                record("b", "ObjectRemoved:Delete", "k", Some("0A")),
                record("b", "ObjectCreated:Put", "k", Some("00B")),
                record("other", "ObjectCreated:Put", "k", Some("0C")),
                record("b", "ObjectRemoved:Delete", "k", Some("0000C")),
            ],
        ),
        Message {
            receipt: "r2".into(),
            body: "definitely not an event".into(),
        },
        message("r3", vec![record("b", "ObjectCreated:Put", "no+seq", None)]),
    ];
    c.handle_batch(&batch).await;
    let changes = sink.changes.lock().clone();
    assert_eq!(
        changes,
        vec![
            (
                "k".to_string(),
                Elsewhere::Created {
                    etag: Some("e1".into())
                }
            ),
            ("k".to_string(), Elsewhere::Removed),
            (
                "no seq".to_string(),
                Elsewhere::Created {
                    etag: Some("e1".into())
                }
            ),
        ]
    );
    assert_eq!(
        c.counts(),
        Counts {
            applied: 3,
            skipped: 3,
            malformed: 1
        }
    );
    assert_eq!(*queue.deleted.lock(), vec!["r1", "r2", "r3"]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_queue_falls_back_to_short_ttls_once_and_recovers() {
    let queue = Arc::new(ScriptedQueue::default());
    {
        let mut answers = queue.answers.lock();
        for _ in 0..3 {
            answers.push_back(Err(QueueError("gone".into())));
        }
        answers.push_back(Ok(vec![message(
            "r",
            vec![record("b", "ObjectCreated:Put", "late", None)],
        )]));
    }
    let (c, sink) = consumer(Arc::clone(&queue));
    let stop = CancellationToken::new();
    let task = tokio::spawn(c.run(stop.clone()));
    // Backoff 1 + 2 + 4 s (paused time runs ahead while all tasks wait).
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        *sink.ttls.lock(),
        vec![Duration::from_secs(5), Duration::from_secs(3600)],
        "one fallback while failing, one return once it works"
    );
    assert_eq!(sink.changes.lock().len(), 1, "held events still apply");
    assert_eq!(*queue.deleted.lock(), vec!["r"]);
}
