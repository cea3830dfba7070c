//! The HTTP server: 127.0.0.1 only, a thread per connection.

use crate::agent::Agent;
use crate::http::{self, Response};
use std::io;
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// A client that connects and then says nothing would otherwise hold its thread forever.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Listens on 127.0.0.1:`port` — never on all interfaces: the endpoints crash and hang the
/// agent on request, which nothing beyond this machine may do.
pub fn bind(port: u16) -> Result<TcpListener, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => format!("127.0.0.1:{port} is already in use"),
        _ => format!("cannot listen on 127.0.0.1:{port}: {e}"),
    })
}

/// Accepts connections for as long as the process lives.
pub fn serve(listener: TcpListener, agent: Arc<Agent>) -> ! {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("carapace-test-agent: accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        if agent.is_hung() {
            hang_forever(listener, stream);
        }
        let agent = Arc::clone(&agent);
        let spawned = thread::Builder::new()
            .name("connection".to_owned())
            .spawn(move || answer(&agent, stream));
        // Without a thread the connection is dropped, which its client sees as a closed socket.
        if let Err(e) = spawned {
            eprintln!("carapace-test-agent: cannot start a connection thread: {e}");
        }
    }
}

/// Reads one request, replies, closes; exits afterwards if the request was `/crash`.
fn answer(agent: &Agent, mut stream: TcpStream) {
    // Without timeouts the request is still answered; they only bound a stuck client.
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let response = match http::read_request(&stream) {
        Ok(request) => agent.handle(&request),
        Err(problem) => Response::error(400, problem),
    };
    // The client may be gone already; there is no one left to tell.
    let _ = http::write_response(&mut stream, &response);
    if let Some(code) = response.exit_after {
        // The reply is in the kernel's send buffer and is still delivered after the exit.
        let _ = stream.shutdown(Shutdown::Write);
        std::process::exit(code);
    }
}

/// The `/hang` fault. The listener and the connection just accepted stay open, so clients
/// still connect (the kernel queues them) and then wait for an answer that never comes: what a
/// hung gateway looks like to a probe, unlike a refused connection, which looks like a crash.
fn hang_forever(listener: TcpListener, stream: TcpStream) -> ! {
    let _held = (listener, stream);
    loop {
        // `park` may return spuriously; the loop is what makes the block permanent.
        thread::park();
    }
}
