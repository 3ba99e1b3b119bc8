//! A fault-injecting TCP proxy on 127.0.0.1 in front of the S3 server. It counts the HTTP
//! requests that pass (our read path sends no request bodies, so every request is a head that
//! starts with its request line), and can stall traffic or cut every connection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Counts {
    pub head: AtomicU64,
    pub list: AtomicU64,
    pub get: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Requests still to answer with 503 SlowDown instead of forwarding.
    fail_next: AtomicU64,
    stalled: AtomicBool,
    dead: AtomicBool,
    counts: Counts,
    streams: Mutex<Vec<TcpStream>>,
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

    /// Answers the next `n` requests with 503 SlowDown, as a throttling S3 does.
    pub fn fail_next(&self, n: u64) {
        self.state.fail_next.store(n, Ordering::SeqCst);
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

fn count_requests(chunk: &[u8], counts: &Counts) {
    let text = String::from_utf8_lossy(chunk);
    for line in text.split("\r\n") {
        if !line.ends_with(" HTTP/1.1") {
            continue;
        }
        if line.starts_with("HEAD ") {
            counts.head.fetch_add(1, Ordering::SeqCst);
        } else if line.starts_with("GET ") && line.contains("list-type=2") {
            counts.list.fetch_add(1, Ordering::SeqCst);
        } else if line.starts_with("GET ") {
            counts.get.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Copies `from` to `to`; on the client side (`reply` is the client socket) counts requests and
/// answers injected failures itself.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &State, mut reply: Option<TcpStream>) {
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
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
                let body = "<Error><Code>SlowDown</Code><Message>injected</Message></Error>";
                let response = format!(
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if client.write_all(response.as_bytes()).is_err() {
                    break;
                }
                continue;
            }
            count_requests(&buf[..n], &state.counts);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
