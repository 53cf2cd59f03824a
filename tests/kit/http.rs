//! One HTTP/1.1 client for every test. A request is bytes, sent exactly as given (the hostile
//! corpus needs malformed ones; [`Request`] builds the usual ones), over TCP or a unix socket, one
//! per connection or many on a keep-alive one. An answer is read by its framing (`Content-Length`,
//! chunked, or up to the close), so a connection that closes before a whole answer is an error:
//! a dropped connection.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Connect, read and write timeout: a hung server fails the test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a server listens: a TCP address or a unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Endpoint {
    /// As csel-auth's `--listen` and nginx's upstream `server` take it: `127.0.0.1:9000` or
    /// `unix:/path`.
    pub fn to_arg(&self) -> String {
        match self {
            Endpoint::Tcp(addr) => addr.to_string(),
            Endpoint::Unix(path) => format!("unix:{}", path.display()),
        }
    }

    pub fn connect(&self) -> io::Result<Conn> {
        let named = |error: io::Error| io::Error::new(error.kind(), format!("connecting to {self}: {error}"));
        match self {
            Endpoint::Tcp(addr) => Conn::tcp(*addr).map_err(named),
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path).map_err(named)?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(Conn::new(Box::new(stream)))
            }
        }
    }

    /// One request on a new connection (`Connection: close`), `Host` naming this endpoint.
    pub fn request(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
        let host = match self {
            Endpoint::Tcp(addr) => addr.to_string(),
            Endpoint::Unix(_) => "localhost".to_string(),
        };
        let request = Request::new(method, target)
            .host(&host)
            .headers(headers)
            .header("Connection", "close")
            .body(body);
        self.connect()?.send(&request.bytes())
    }

    pub fn get(&self, target: &str) -> io::Result<Response> {
        self.request("GET", target, &[], b"")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_arg())
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint::Tcp(addr)
    }
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// A request as bytes: the request line, `Host`, the headers in the order given (repeats
/// allowed), `Content-Length` when there is a body or the method expects one, the body.
#[derive(Clone, Debug)]
pub struct Request {
    method: Vec<u8>,
    target: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Request {
        Request::raw(method.as_bytes(), target.as_bytes())
    }

    pub fn raw(method: &[u8], target: &[u8]) -> Request {
        Request {
            method: method.to_vec(),
            target: target.to_vec(),
            headers: vec![(b"Host".to_vec(), b"csel-auth.test".to_vec())],
            body: Vec::new(),
        }
    }

    /// The `/auth` subrequest for `method uri` with only the two headers csel-auth cannot do
    /// without.
    pub fn subrequest(method: &str, uri: &str) -> Request {
        Request::subrequest_raw(method.as_bytes(), uri.as_bytes())
    }

    pub fn subrequest_raw(method: &[u8], uri: &[u8]) -> Request {
        Request::new("GET", "/auth")
            .header("X-Original-URI", uri)
            .header("X-Original-Method", method)
    }

    /// The rest of what nginx's snippet sends: the client address and the format.
    pub fn with_nginx_headers(self) -> Request {
        self.header("X-Real-IP", "127.0.0.1")
            .header("X-Repository-Format", "docker")
    }

    /// `Authorization: Basic` for `user:password`.
    pub fn basic(self, user: &str, password: &str) -> Request {
        self.header("Authorization", basic(user, password))
    }

    /// `Authorization: Basic` for `user` with the test password (see [`super::password`]), or
    /// nothing for anonymous.
    pub fn user(self, user: Option<&str>) -> Request {
        match user {
            Some(user) => self.basic(user, &super::password(user)),
            None => self,
        }
    }

    /// Replaces the `Host` value.
    pub fn host(self, host: &str) -> Request {
        let mut request = self.without("Host");
        request.headers.insert(0, (b"Host".to_vec(), host.as_bytes().to_vec()));
        request
    }

    pub fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Request {
        self.headers.push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    pub fn headers(self, headers: &[(&str, &str)]) -> Request {
        headers
            .iter()
            .fold(self, |request, (name, value)| request.header(name, value))
    }

    /// Drops every header named `name` (case-insensitive).
    pub fn without(mut self, name: impl AsRef<[u8]>) -> Request {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_ref()));
        self
    }

    pub fn body(mut self, body: &[u8]) -> Request {
        self.body = body.to_vec();
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(&self.method);
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let length = self.body.len().to_string();
        let expects_body = matches!(self.method.as_slice(), b"POST" | b"PUT" | b"PATCH");
        let content_length =
            (!self.body.is_empty() || expects_body).then_some((&b"Content-Length"[..], length.as_bytes()));
        let headers = self.headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice()));
        for (name, value) in headers.chain(content_length) {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// An answer read to its end.
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The only value of header `name` (case-insensitive); fails the test when it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.header_all(name);
        assert!(values.len() <= 1, "header {name} repeated: {values:?}");
        values.first().copied()
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(value) => value,
            Err(error) => panic!("response body is not JSON ({error}): {}", self.text()),
        }
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.text())
            .finish()
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One connection: requests go out as given, answers come back parsed, one after the other.
pub struct Conn {
    stream: Box<dyn Stream>,
    buffer: Vec<u8>,
}

impl Conn {
    fn new(stream: Box<dyn Stream>) -> Conn {
        Conn {
            stream,
            buffer: Vec::with_capacity(1024),
        }
    }

    pub fn tcp(addr: SocketAddr) -> io::Result<Conn> {
        Conn::configured(TcpStream::connect_timeout(&addr, IO_TIMEOUT)?)
    }

    /// A TCP connection from the local address `from` (any of 127.0.0.0/8 on loopback), for
    /// servers that tell clients apart by address.
    pub fn tcp_from(from: [u8; 4], to: SocketAddr) -> io::Result<Conn> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let stream = runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((from, 0)))?;
            socket.connect(to).await?.into_std()
        })?;
        stream.set_nonblocking(false)?;
        Conn::configured(stream)
    }

    fn configured(stream: TcpStream) -> io::Result<Conn> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Conn::new(Box::new(stream)))
    }

    /// Sends `request` as it is and reads one answer (without a body if it was a HEAD).
    pub fn send(&mut self, request: &[u8]) -> io::Result<Response> {
        self.stream.write_all(request)?;
        self.stream.flush()?;
        self.read_response(request.starts_with(b"HEAD "))
    }

    /// A request built from its parts on this connection; fails the test on an I/O error.
    pub fn request(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let request = Request::new(method, target).headers(headers).body(body);
        match self.send(&request.bytes()) {
            Ok(response) => response,
            Err(error) => panic!("{method} {target} failed: {error}"),
        }
    }

    /// The `/auth` subrequest for `method uri`, with Basic credentials when `login` is given.
    pub fn auth(&mut self, method: &str, uri: &str, login: Option<(&str, &str)>) -> Response {
        let mut request = Request::subrequest(method, uri);
        if let Some((user, password)) = login {
            request = request.basic(user, password);
        }
        match self.send(&request.bytes()) {
            Ok(response) => response,
            Err(error) => panic!("/auth for {method} {uri} failed: {error}"),
        }
    }

    /// Reads one answer: the head, then a body framed by `Content-Length`, chunked, or up to
    /// the close.
    pub fn read_response(&mut self, head_only: bool) -> io::Result<Response> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let head_end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        self.buffer.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                line.split_once(':')
                    .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
                    .ok_or_else(|| invalid(format!("bad header line {line:?}")))
            })
            .collect::<io::Result<_>>()?;
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let body = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else if let Some(length) = find("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| invalid(format!("bad content-length {length:?}")))?;
            self.take(length)?
        } else if find("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            self.read_chunked()?
        } else {
            let mut rest = std::mem::take(&mut self.buffer);
            self.stream.read_to_end(&mut rest)?;
            rest
        };
        Ok(Response { status, headers, body })
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let size_line = self.line()?;
            let size_text = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                while !self.line()?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.take(size)?);
            self.line()?;
        }
    }

    /// The next line, without its CRLF.
    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
                self.buffer.drain(..end + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }

    fn take(&mut self, length: usize) -> io::Result<Vec<u8>> {
        while self.buffer.len() < length {
            self.fill()?;
        }
        Ok(self.buffer.drain(..length).collect())
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
