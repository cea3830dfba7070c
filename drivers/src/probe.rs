//! Health probes: HTTP (an OpenClaw gateway's `/readyz`), TCP, or a command; each bounded by a
//! timeout, so a hung agent reads as a failed probe, never as a hung driver.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How to tell that an agent serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `http://HOST:PORT/PATH`: healthy on a 2xx status.
    Http {
        addr: SocketAddr,
        host: String,
        path: String,
    },
    /// `tcp://HOST:PORT`: healthy when a connection opens.
    Tcp { addr: SocketAddr },
    /// `POST PATH` with `Authorization: Bearer TOKEN` and the body `{}`: passes when the
    /// answer is neither 401 nor 403 nor a 5xx, i.e. the agent takes `token` as its credential
    /// now. It tells that a config carrying a new token has taken effect in a running agent.
    Authorized {
        addr: SocketAddr,
        host: String,
        path: String,
        token: Token,
    },
    /// `cmd:PROGRAM ARG...`: healthy when it exits 0.
    Command { program: String, args: Vec<String> },
}

impl FromStr for Probe {
    type Err = String;

    fn from_str(text: &str) -> Result<Probe, String> {
        let addr = |hostport: &str| -> Result<SocketAddr, String> {
            let hostport = hostport.replace("localhost", "127.0.0.1");
            hostport
                .parse()
                .map_err(|_| format!("`{hostport}` is not IP:PORT (use a numeric address)"))
        };
        if let Some(rest) = text.strip_prefix("http://") {
            let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
            return Ok(Probe::Http {
                addr: addr(hostport)?,
                host: hostport.to_owned(),
                path: format!("/{path}"),
            });
        }
        if let Some(rest) = text.strip_prefix("tcp://") {
            return Ok(Probe::Tcp { addr: addr(rest)? });
        }
        if let Some(rest) = text.strip_prefix("cmd:") {
            let mut words = rest.split_whitespace().map(str::to_owned);
            let program = words.next().ok_or("`cmd:` needs a program")?;
            return Ok(Probe::Command {
                program,
                args: words.collect(),
            });
        }
        Err(format!(
            "`{text}`: a probe is http://IP:PORT/PATH, tcp://IP:PORT or cmd:PROGRAM ARGS"
        ))
    }
}

impl Probe {
    /// An [`Probe::Authorized`] probe of the `http://IP:PORT/PATH` in `url`.
    pub fn authorized(url: &str, token: String) -> Result<Probe, String> {
        match url.parse::<Probe>()? {
            Probe::Http { addr, host, path } => Ok(Probe::Authorized {
                addr,
                host,
                path,
                token: Token(token),
            }),
            _ => Err(format!(
                "`{url}`: an authorized probe is http://IP:PORT/PATH"
            )),
        }
    }

    /// Runs the probe once; `Err` says why it failed.
    pub async fn check(&self, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.attempt()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        }
    }

    async fn attempt(&self) -> Result<(), String> {
        match self {
            Probe::Http { addr, host, path } => {
                let request =
                    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
                let status = http_status(addr, &request).await?;
                if status.starts_with('2') && status.len() == 3 {
                    Ok(())
                } else {
                    Err(format!("HTTP status `{status}`"))
                }
            }
            Probe::Authorized {
                addr,
                host,
                path,
                token,
            } => {
                let request = format!(
                    "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\
                     Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
                    token.0
                );
                let status = http_status(addr, &request).await?;
                let refused = matches!(status.as_str(), "401" | "403") || status.starts_with('5');
                if status.len() == 3 && !refused {
                    Ok(())
                } else {
                    // The status only: the token is never part of a reason.
                    Err(format!("HTTP status `{status}` with the new credential"))
                }
            }
            Probe::Tcp { addr } => TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("connect: {e}")),
            Probe::Command { program, args } => {
                let status = tokio::process::Command::new(program)
                    .args(args)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await
                    .map_err(|e| format!("run: {e}"))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("exited {status}"))
                }
            }
        }
    }
}

/// A credential a probe presents; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Sends one request and reads the status code of the answer.
async fn http_status(addr: &SocketAddr, request: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    // The status line is all we need; read at most a small head.
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream
            .read(&mut head[len..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    Ok(line.split_whitespace().nth(1).unwrap_or("").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse_and_refuse_what_they_cannot_check() {
        assert_eq!(
            "http://127.0.0.1:28811/readyz".parse::<Probe>().unwrap(),
            Probe::Http {
                addr: "127.0.0.1:28811".parse().unwrap(),
                host: "127.0.0.1:28811".into(),
                path: "/readyz".into()
            }
        );
        assert!(matches!(
            "tcp://localhost:80".parse::<Probe>(),
            Ok(Probe::Tcp { .. })
        ));
        assert!(matches!(
            "cmd:true".parse::<Probe>(),
            Ok(Probe::Command { .. })
        ));
        for bad in ["ftp://x", "http://example.org/", "tcp://:80", "cmd:"] {
            assert!(bad.parse::<Probe>().is_err(), "{bad}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_real_listener_passes_tcp_and_fails_http_garbage() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for answer in ["HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 503 Busy\r\n\r\n"] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = socket.read(&mut buf).await;
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let http: Probe = format!("http://{addr}/readyz").parse().unwrap();
        assert_eq!(http.check(Duration::from_secs(5)).await, Ok(()));
        assert_eq!(
            http.check(Duration::from_secs(5)).await,
            Err("HTTP status `503`".into())
        );
        server.await.unwrap();
        // A port bound but not listening refuses connections, and stays ours meanwhile, so no
        // other test can start listening on it.
        let reserved = tokio::net::TcpSocket::new_v4().unwrap();
        reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let refused: Probe = format!("tcp://{}", reserved.local_addr().unwrap())
            .parse()
            .unwrap();
        assert!(refused.check(Duration::from_secs(5)).await.is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_authorized_probe_passes_only_when_its_token_is_taken() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for answer in ["401 Unauthorized", "503 Busy", "404 Not Found"] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let n = socket.read(&mut buf).await.unwrap();
                requests.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let reply = format!("HTTP/1.1 {answer}\r\n\r\n");
                socket.write_all(reply.as_bytes()).await.unwrap();
            }
            requests
        });
        let probe = Probe::authorized(&format!("http://{addr}/auth"), "s3cret".into()).unwrap();
        assert!(
            !format!("{probe:?}").contains("s3cret"),
            "Debug hides the token"
        );
        let refused = probe.check(Duration::from_secs(5)).await.unwrap_err();
        assert!(
            refused.contains("401") && !refused.contains("s3cret"),
            "{refused}"
        );
        assert!(
            probe.check(Duration::from_secs(5)).await.is_err(),
            "a 5xx is no proof"
        );
        assert_eq!(probe.check(Duration::from_secs(5)).await, Ok(()));
        let requests = server.await.unwrap();
        assert!(
            requests[0].starts_with("POST /auth ")
                && requests[0].contains("Authorization: Bearer s3cret\r\n"),
            "{}",
            requests[0]
        );
        assert!(Probe::authorized("tcp://127.0.0.1:1", "t".into()).is_err());
    }
}
