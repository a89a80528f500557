//! An HTTP upload sink for the bandwidth test: what a speed-test endpoint does (read the POST
//! body, then answer), or fails to do.

// Each test crate uses only some of the answers.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How the sink answers an upload.
#[derive(Clone, Copy, PartialEq)]
pub enum Answer {
    Ok,
    /// 200 with a body (as Cloudflare's endpoint answers): the client must read it to reuse
    /// the connection.
    OkWithBody,
    Http500,
    /// 301 to another path (a client following it would POST nothing there).
    Redirect,
    /// Reads the body, never answers.
    Never,
}

/// An HTTP upload sink: reads each POST body (by Content-Length), then answers per [`Answer`].
/// Its threads end with the test process.
pub fn sink(ip: Ipv4Addr, answer: Answer) -> SocketAddr {
    sink_counting(ip, answer).0
}

/// [`sink`], and how many connections it accepted so far.
pub fn sink_counting(ip: Ipv4Addr, answer: Answer) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || serve(conn, answer));
        }
    });
    (addr, count)
}

/// One connection, keep-alive: request after request.
fn serve(conn: TcpStream, answer: Answer) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut len = None;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse::<u64>().ok();
            }
        }
        let Some(len) = len else {
            let _ = w.write_all(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\n\r\n");
            return;
        };
        if std::io::copy(&mut (&mut r).take(len), &mut std::io::sink()).unwrap_or(0) != len {
            return;
        }
        let with_body;
        let reply: &[u8] = match answer {
            Answer::Ok => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Answer::OkWithBody => {
                let body = format!("{{\"received\":{len},\"pad\":\"{}\"}}", "x".repeat(2000));
                with_body = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                with_body.as_bytes()
            }
            Answer::Http500 => b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
            Answer::Redirect => b"HTTP/1.1 301 Moved Permanently\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
            Answer::Never => {
                // Hold the connection open, silent, until the client gives up.
                let _ = std::io::copy(&mut r, &mut std::io::sink());
                return;
            }
        };
        if w.write_all(reply).is_err() {
            return;
        }
    }
}
