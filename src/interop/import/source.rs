//! Where import inputs come from, and reading them line by line without ever holding a
//! whole file: `file://` paths under the import folder and `http(s)` URLs on allowed
//! hosts. A resumed input starts at a byte offset (a seek, or an HTTP Range request;
//! a server that ignores Range is skipped forward).

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use url::Url;

/// Lines longer than this are rejected (and skipped) rather than buffered.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
const READ_CHUNK: usize = 256 * 1024;

/// What inputs a caller may name.
#[derive(Debug, Clone)]
pub enum SourcePolicy {
    /// `$import`: http(s) on `allowed_hosts` (lower case, `host` or `host:port`), files
    /// under `import_dir` only.
    Restricted { allowed_hosts: Vec<String>, import_dir: Option<PathBuf> },
    /// The operator's CLI: any local file or URL the operator can reach.
    Operator,
}

impl SourcePolicy {
    pub fn restricted(allowed_hosts: &str, import_dir: Option<&Path>) -> Self {
        let allowed_hosts = allowed_hosts.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
        SourcePolicy::Restricted { allowed_hosts, import_dir: import_dir.map(Path::to_path_buf) }
    }

    /// Checks an input URL; the error says why it is refused and how to allow it.
    pub fn check(&self, text: &str) -> Result<Url, String> {
        let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL ({e})"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{}: credentials in an input URL are refused (they would be stored with the job)", redact(&url)));
        }
        match (url.scheme(), self) {
            ("http" | "https", SourcePolicy::Operator) => Ok(url),
            ("http" | "https", SourcePolicy::Restricted { allowed_hosts, .. }) => {
                let host = url.host_str().unwrap_or("").to_ascii_lowercase();
                let with_port = url.port().map(|p| format!("{host}:{p}"));
                if allowed_hosts.iter().any(|h| *h == host || Some(h) == with_port.as_ref()) {
                    Ok(url)
                } else {
                    Err(format!("{}: host {host:?} is not in RADIOLOGY_IMPORT_ALLOWED_HOSTS", redact(&url)))
                }
            }
            ("file", policy) => {
                let path = url.to_file_path().map_err(|_| format!("{text}: not a local file path"))?;
                if let SourcePolicy::Restricted { import_dir, .. } = policy {
                    let Some(dir) = import_dir else {
                        return Err(format!("{text}: file inputs are disabled (set RADIOLOGY_IMPORT_DIR)"));
                    };
                    let dir = dir.canonicalize().map_err(|e| format!("the import folder {} is unusable: {e}", dir.display()))?;
                    let real = path.canonicalize().map_err(|e| format!("{text}: {e}"))?;
                    if !real.starts_with(&dir) {
                        return Err(format!("{text}: only files under RADIOLOGY_IMPORT_DIR ({}) may be imported", dir.display()));
                    }
                }
                Ok(url)
            }
            (scheme, _) => Err(format!("{text}: scheme {scheme:?} is not supported (use https, http or file)")),
        }
    }
}

fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// One line of an input.
#[derive(Debug)]
pub struct Line {
    /// 1-based physical line number.
    pub number: i64,
    pub bytes: Vec<u8>,
    /// The line was longer than [`MAX_LINE_BYTES`]; `bytes` is empty.
    pub too_long: bool,
    /// Byte offset of the line's first byte.
    pub start_offset: i64,
    /// Byte offset just after this line (where a resume starts).
    pub end_offset: i64,
}

enum Body {
    File(tokio::fs::File),
    Http(reqwest::Response),
    Empty,
}

/// Reads an input as lines (`\n`-terminated; a trailing `\r` is dropped).
pub struct LineReader {
    body: Body,
    buf: Vec<u8>,
    start: usize,
    offset: i64,
    line: i64,
    eof: bool,
    /// A line given back by [`LineReader::unread`].
    unread: Option<Line>,
    /// Total size, when the source says.
    pub total_bytes: Option<i64>,
}

impl LineReader {
    /// Opens `url` at `offset` (line `line` ended there).
    pub async fn open(http: &reqwest::Client, url: &Url, offset: i64, line: i64) -> Result<Self, String> {
        let (body, total_bytes) = match url.scheme() {
            "file" => {
                let path = url.to_file_path().map_err(|_| format!("{url}: not a local path"))?;
                let mut file = tokio::fs::File::open(&path).await.map_err(|e| format!("{}: {e}", path.display()))?;
                let len = file.metadata().await.map_err(|e| format!("{}: {e}", path.display()))?.len() as i64;
                if offset > len {
                    return Err(format!("{}: the file is shorter ({len} bytes) than its checkpoint ({offset}); was it replaced?", path.display()));
                }
                file.seek(std::io::SeekFrom::Start(offset as u64)).await.map_err(|e| format!("{}: {e}", path.display()))?;
                (Body::File(file), Some(len))
            }
            _ => {
                let mut request = http.get(url.clone());
                if offset > 0 {
                    request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
                }
                let response = request.send().await.map_err(|e| format!("{}: {e}", redact(url)))?;
                let status = response.status();
                if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && offset > 0 {
                    // Resumed exactly at the end (`Content-Range: bytes */<offset>`): nothing left.
                    let total: Option<i64> = response.headers().get(reqwest::header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("bytes */")).and_then(|t| t.parse().ok());
                    if total == Some(offset) {
                        return Ok(LineReader { body: Body::Empty, buf: Vec::new(), start: 0, offset, line, eof: true, unread: None, total_bytes: total });
                    }
                }
                if !status.is_success() {
                    return Err(format!("{}: HTTP {status}", redact(url)));
                }
                let total = if status == reqwest::StatusCode::PARTIAL_CONTENT {
                    response
                        .headers()
                        .get(reqwest::header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.rsplit('/').next())
                        .and_then(|t| t.parse().ok())
                } else {
                    response.content_length().map(|n| n as i64)
                };
                let mut reader = LineReader { body: Body::Http(response), buf: Vec::new(), start: 0, offset: 0, line, eof: false, unread: None, total_bytes: total };
                if status != reqwest::StatusCode::PARTIAL_CONTENT {
                    reader.skip(offset).await?; // the server ignored Range
                }
                reader.offset = offset;
                return Ok(reader);
            }
        };
        Ok(LineReader { body, buf: Vec::new(), start: 0, offset, line, eof: false, unread: None, total_bytes })
    }

    async fn fill(&mut self) -> Result<usize, String> {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        match &mut self.body {
            Body::File(f) => {
                let before = self.buf.len();
                self.buf.resize(before + READ_CHUNK, 0);
                let n = f.read(&mut self.buf[before..]).await.map_err(|e| e.to_string());
                self.buf.truncate(before + *n.as_ref().unwrap_or(&0));
                n
            }
            Body::Empty => Ok(0),
            Body::Http(r) => match r.chunk().await.map_err(|e| format!("reading the input: {e}"))? {
                Some(bytes) => {
                    self.buf.extend_from_slice(&bytes);
                    Ok(bytes.len())
                }
                None => Ok(0),
            },
        }
    }

    async fn skip(&mut self, mut n: i64) -> Result<(), String> {
        while n > 0 {
            if self.start == self.buf.len() && self.fill().await? == 0 {
                return Err("the input is shorter than its checkpoint".into());
            }
            let take = (n as usize).min(self.buf.len() - self.start);
            self.start += take;
            n -= take as i64;
        }
        Ok(())
    }

    /// The next line, or `None` at the end.
    /// (byte offset, line number) after the last line returned.
    pub fn position(&self) -> (i64, i64) {
        (self.offset, self.line)
    }

    /// Gives a line back: the next [`LineReader::next_line`] returns it again, and the
    /// position is before it until then.
    pub fn unread(&mut self, line: Line) {
        self.offset = line.start_offset;
        self.line = line.number - 1;
        self.unread = Some(line);
    }

    pub async fn next_line(&mut self) -> Result<Option<Line>, String> {
        if let Some(line) = self.unread.take() {
            self.offset = line.end_offset;
            self.line = line.number;
            return Ok(Some(line));
        }
        let start_offset = self.offset;
        // Bytes after `start` already searched for a newline (relative: `fill` may compact).
        let mut scanned = 0;
        let mut too_long = false;
        loop {
            if let Some(i) = self.buf[self.start + scanned..].iter().position(|b| *b == b'\n') {
                let end = self.start + scanned + i;
                let too_long = too_long || end - self.start > MAX_LINE_BYTES;
                let mut bytes = if too_long { Vec::new() } else { self.buf[self.start..end].to_vec() };
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
                self.offset += (end + 1 - self.start) as i64;
                self.start = end + 1;
                self.line += 1;
                return Ok(Some(Line { number: self.line, bytes, too_long, start_offset, end_offset: self.offset }));
            }
            scanned = self.buf.len() - self.start;
            if scanned > MAX_LINE_BYTES {
                // Drop what is buffered of an over-long line; keep counting its bytes.
                too_long = true;
                self.offset += scanned as i64;
                self.buf.truncate(self.start);
                scanned = 0;
            }
            if self.eof || self.fill().await? == 0 {
                self.eof = true;
                if self.start == self.buf.len() && !too_long {
                    return Ok(None);
                }
                let bytes = if too_long { Vec::new() } else { self.buf[self.start..].to_vec() };
                self.offset += (self.buf.len() - self.start) as i64;
                self.start = self.buf.len();
                self.line += 1;
                return Ok(Some(Line { number: self.line, bytes, too_long, start_offset, end_offset: self.offset }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_what_is_not_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("a.ndjson");
        std::fs::write(&inside, "{}\n").unwrap();
        let policy = SourcePolicy::restricted("files.example, 127.0.0.1:8080", Some(dir.path()));
        assert!(policy.check("https://files.example/x.ndjson").is_ok());
        assert!(policy.check("http://127.0.0.1:8080/x").is_ok());
        assert!(policy.check("http://127.0.0.1:9090/x").unwrap_err().contains("RADIOLOGY_IMPORT_ALLOWED_HOSTS"));
        assert!(policy.check("https://user:pw@files.example/x").unwrap_err().contains("credentials"));
        assert!(policy.check("ftp://files.example/x").unwrap_err().contains("scheme"));
        assert!(policy.check(Url::from_file_path(&inside).unwrap().as_ref()).is_ok());
        assert!(policy.check("file:///etc/passwd").unwrap_err().contains("RADIOLOGY_IMPORT_DIR"));
        let escape = format!("file://{}/../../etc/passwd", dir.path().display());
        assert!(policy.check(&escape).is_err());
        assert!(SourcePolicy::restricted("", None).check("file:///etc/passwd").unwrap_err().contains("disabled"));
    }

    #[tokio::test]
    async fn lines_resume_at_an_offset_and_long_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ndjson");
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        std::fs::write(&path, format!("a\r\n\nbb\n{long}\nccc")).unwrap();
        let url = Url::from_file_path(&path).unwrap();
        let http = reqwest::Client::new();
        let mut r = LineReader::open(&http, &url, 0, 0).await.unwrap();
        let mut seen = Vec::new();
        while let Some(l) = r.next_line().await.unwrap() {
            seen.push((l.number, String::from_utf8(l.bytes).unwrap(), l.too_long, l.end_offset));
        }
        let n = seen.len();
        assert_eq!(n, 5);
        assert_eq!(seen[0], (1, "a".into(), false, 3));
        assert_eq!(seen[1], (2, "".into(), false, 4));
        assert_eq!(seen[2], (3, "bb".into(), false, 7));
        assert!(seen[3].2, "the long line is flagged");
        assert_eq!(seen[4].1, "ccc");
        let total = std::fs::metadata(&path).unwrap().len() as i64;
        assert_eq!(seen[4].3, total);
        let mut resumed = LineReader::open(&http, &url, 4, 2).await.unwrap();
        let l = resumed.next_line().await.unwrap().unwrap();
        assert_eq!((l.number, l.bytes.as_slice()), (3, b"bb".as_slice()));
    }
}
