//! A fault-injecting TCP proxy on 127.0.0.1 in front of the S3 server. It counts the HTTP
//! requests that pass (request lines are found at the start of reads: a head arrives in a read
//! of its own, and binary bodies never hold a line ending in ` HTTP/1.1`), can stall traffic or
//! cut every connection, and can throttle the link to a given rate in each direction, shared by
//! all connections, as a slow office or home uplink would.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Counts {
    pub head: AtomicU64,
    pub list: AtomicU64,
    pub get: AtomicU64,
    pub put: AtomicU64,
    pub post: AtomicU64,
    pub delete: AtomicU64,
}

impl Counts {
    /// Every request counted.
    pub fn total(&self) -> u64 {
        [
            &self.head,
            &self.list,
            &self.get,
            &self.put,
            &self.post,
            &self.delete,
        ]
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .sum()
    }
}

#[derive(Default)]
struct State {
    /// Requests still to answer with 503 SlowDown instead of forwarding.
    fail_next: AtomicU64,
    /// 503s sent so far (their request ids are INJECTED0, INJECTED1...).
    injected: AtomicU64,
    /// Request body reads still to damage (one byte flipped in each).
    corrupt_next: AtomicU64,
    /// The heads (request line and headers) of the requests counted, the first `HEADS_KEPT`.
    heads: Mutex<Vec<String>>,
    stalled: AtomicBool,
    dead: AtomicBool,
    counts: Counts,
    streams: Mutex<Vec<TcpStream>>,
    /// Bytes per second in each direction (0: unthrottled).
    rate: AtomicU64,
    /// When each direction's link is free again: [to server, to client].
    free_at: [Mutex<Option<Instant>>; 2],
}

impl State {
    /// Waits until `n` more bytes fit through the throttled link in direction `up`.
    fn pace(&self, up: bool, n: usize) {
        let rate = self.rate.load(Ordering::SeqCst);
        if rate == 0 {
            return;
        }
        let done = {
            let mut free = self.free_at[usize::from(!up)].lock().unwrap();
            let now = Instant::now();
            let start = free.filter(|t| *t > now).unwrap_or(now);
            let done = start + Duration::from_secs_f64(n as f64 / rate as f64);
            *free = Some(done);
            done
        };
        std::thread::sleep(done.saturating_duration_since(Instant::now()));
    }
}

pub struct Proxy {
    pub endpoint: String,
    state: Arc<State>,
}

impl Proxy {
    /// A proxy forwarding to `upstream` (host:port).
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        let upstream = upstream.to_string();
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if st.dead.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                {
                    let mut streams = st.streams.lock().unwrap();
                    streams.push(client.try_clone().unwrap());
                    streams.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let reply = client.try_clone().unwrap();
                let st1 = Arc::clone(&st);
                let st2 = Arc::clone(&st);
                std::thread::spawn(move || pump(client, server, &st1, Some(reply)));
                std::thread::spawn(move || pump(s2, c2, &st2, None));
            }
        });
        Proxy { endpoint, state }
    }

    pub fn counts(&self) -> &Counts {
        &self.state.counts
    }

    /// The heads of the requests that passed (up to the first `HEADS_KEPT`), oldest first.
    pub fn heads(&self) -> Vec<String> {
        self.state.heads.lock().unwrap().clone()
    }

    /// Answers the next `n` requests with 503 SlowDown, as a throttling S3 does.
    pub fn fail_next(&self, n: u64) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Flips one byte in each of the next `n` reads of request bodies that hold no request
    /// head (so a large body is hit in its middle), as a faulty link or middlebox would.
    pub fn corrupt_next(&self, n: u64) {
        self.state.corrupt_next.store(n, Ordering::SeqCst);
    }

    /// Limits the link to `bytes_per_sec` in each direction, shared by every connection.
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.state.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Holds every byte in both directions until `resume`.
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.state.stalled.store(false, Ordering::SeqCst);
    }

    /// Forwards again after `kill`: the server is back.
    pub fn revive(&self) {
        self.state.dead.store(false, Ordering::SeqCst);
    }

    /// Cuts every connection and refuses new ones: the endpoint is dead.
    pub fn kill(&self) {
        self.state.dead.store(true, Ordering::SeqCst);
        for s in self.state.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Request heads `Proxy::heads` keeps.
const HEADS_KEPT: usize = 10_000;

fn count_requests(chunk: &[u8], state: &State) {
    let counts = &state.counts;
    let text = String::from_utf8_lossy(chunk);
    let mut rest: &str = &text;
    while let Some(end) = rest.find("\r\n") {
        let line = &rest[..end];
        let head_end = rest.find("\r\n\r\n").unwrap_or(rest.len());
        let head = &rest[..head_end];
        rest = &rest[end + 2..];
        if !line.ends_with(" HTTP/1.1") {
            continue;
        }
        let mut heads = state.heads.lock().unwrap();
        if heads.len() < HEADS_KEPT {
            heads.push(head.to_string());
        }
        drop(heads);
        if line.starts_with("HEAD ") {
            counts.head.fetch_add(1, Ordering::SeqCst);
        } else if line.starts_with("GET ") && line.contains("list-type=2") {
            counts.list.fetch_add(1, Ordering::SeqCst);
        } else if line.starts_with("GET ") {
            counts.get.fetch_add(1, Ordering::SeqCst);
        } else if line.starts_with("PUT ") {
            counts.put.fetch_add(1, Ordering::SeqCst);
        } else if line.starts_with("POST ") {
            counts.post.fetch_add(1, Ordering::SeqCst);
        } else if line.starts_with("DELETE ") {
            counts.delete.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Copies `from` to `to`; on the client side (`reply` is the client socket) counts requests and
/// answers injected failures itself.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &State, mut reply: Option<TcpStream>) {
    let up = reply.is_some();
    let mut buf = vec![0; 64 << 10];
    loop {
        // Throttled, the link takes small reads, so pacing stays smooth at a few hundred KB/s.
        let max = if state.rate.load(Ordering::SeqCst) > 0 {
            16 << 10
        } else {
            buf.len()
        };
        let n = match from.read(&mut buf[..max]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        state.pace(up, n);
        while state.stalled.load(Ordering::SeqCst) && !state.dead.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if state.dead.load(Ordering::SeqCst) {
            break;
        }
        if let Some(client) = reply.as_mut() {
            let injected = state
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if injected {
                let id = format!("INJECTED{}", state.injected.fetch_add(1, Ordering::SeqCst));
                let body = format!(
                    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>{id}</RequestId></Error>"
                );
                let response = format!(
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nx-amz-request-id: {id}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if client.write_all(response.as_bytes()).is_err() {
                    break;
                }
                continue;
            }
            count_requests(&buf[..n], state);
            let body_only =
                n >= 4096 && !String::from_utf8_lossy(&buf[..n]).contains(" HTTP/1.1\r\n");
            if body_only
                && state
                    .corrupt_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
                    .is_ok()
            {
                buf[n / 2] ^= 0x5a;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
