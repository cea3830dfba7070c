//! Just enough HTTP/1.1 for probes and curl: one request per connection, JSON replies,
//! `Connection: close`. Anything it cannot parse is the client's error (400), never a panic.

use serde_json::Value;
use std::io::{self, BufRead, BufReader, Read, Write};

/// Requests are tiny; a bigger one is refused rather than buffered.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

#[derive(Debug, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    query: Vec<(String, String)>,
    /// The value of the `Authorization` header, if sent.
    pub authorization: Option<String>,
}

impl Request {
    /// The value of query parameter `name` (`/spike?bytes=N`), if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Value,
    /// Exit the process with this code once the reply is sent (the `/crash` fault).
    pub exit_after: Option<i32>,
}

impl Response {
    pub fn new(status: u16, body: Value) -> Response {
        Response {
            status,
            body,
            exit_after: None,
        }
    }

    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::new(status, serde_json::json!({ "error": message.into() }))
    }
}

/// Reads one request: its line, its headers, and its body, which is discarded but read so
/// that closing the socket does not reset the connection under the reply.
pub fn read_request(stream: impl Read) -> Result<Request, String> {
    let mut reader = BufReader::new(stream.take(MAX_REQUEST_BYTES));
    let request_line = read_line(&mut reader)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("malformed request line {request_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unsupported protocol {version:?}"));
    }
    let (body_length, authorization) = read_headers(&mut reader)?;
    let read = io::copy(&mut (&mut reader).take(body_length), &mut io::sink())
        .map_err(|e| format!("cannot read the body: {e}"))?;
    if read < body_length {
        return Err("the body is shorter than its Content-Length".to_owned());
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: parse_query(query),
        authorization,
    })
}

/// Reads headers up to the blank line and returns the body's length and the
/// `Authorization` header.
fn read_headers(reader: &mut impl BufRead) -> Result<(u64, Option<String>), String> {
    let mut body_length = 0;
    let mut authorization = None;
    loop {
        let header = read_line(reader)?;
        if header.is_empty() {
            return Ok((body_length, authorization));
        }
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("malformed header {header:?}"))?;
        if name.eq_ignore_ascii_case("content-length") {
            body_length = value
                .trim()
                .parse()
                .map_err(|_| format!("bad Content-Length {:?}", value.trim()))?;
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // No endpoint takes a body, so chunked decoding is not worth having.
            return Err("Transfer-Encoding is not supported".to_owned());
        }
    }
}

/// One CRLF- (or LF-) terminated line, without its terminator.
fn read_line(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the request: {e}"))?;
    let Some(line) = line.strip_suffix('\n') else {
        return Err("the request ended early or is too large".to_owned());
    };
    Ok(line.strip_suffix('\r').unwrap_or(line).to_owned())
}

/// `a=1&b=2` as pairs; values are numbers here, so percent-decoding is not needed.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// Writes the reply in one piece.
pub fn write_response(stream: &mut impl Write, response: &Response) -> io::Result<()> {
    let body = response.body.to_string();
    let reply = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        response.status,
        reason(response.status),
        body.len(),
    );
    stream.write_all(reply.as_bytes())?;
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_with_a_query_and_a_body_is_parsed() {
        let raw = "POST /spike?bytes=42&x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let request = read_request(raw.as_bytes()).expect("valid");
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", "/spike")
        );
        assert_eq!(request.param("bytes"), Some("42"));
        assert_eq!(request.param("x"), Some(""));
        assert_eq!(request.param("y"), None);
    }

    #[test]
    fn malformed_requests_are_errors() {
        for raw in [
            "",
            "GET\r\n\r\n",
            "GET / HTTP/1.1",
            "GET / SPDY/3\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: many\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(read_request(raw.as_bytes()).is_err(), "{raw:?}");
        }
        let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100_000));
        assert!(read_request(huge.as_bytes()).is_err());
        assert!(read_request(&[0xff, 0xfe, b'\n'][..]).is_err());
    }

    #[test]
    fn a_response_has_a_length_and_closes() {
        let mut out = Vec::new();
        let response = Response::new(503, serde_json::json!({ "ready": false }));
        write_response(&mut out, &response).expect("written");
        assert_eq!(
            String::from_utf8(out).expect("text"),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
             Content-Length: 15\r\nConnection: close\r\n\r\n{\"ready\":false}"
        );
    }
}
