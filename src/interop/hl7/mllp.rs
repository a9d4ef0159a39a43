//! MLLP framing (HL7 v2 over TCP): a message is `0x0B <bytes> 0x1C 0x0D`.
//!
//! The decoder is fed whatever the socket gives and returns whole frames. It is
//! tolerant in the ways real senders need: bytes before a `0x0B` (keep-alive newlines,
//! a stray CR after the previous frame) are skipped and counted; several frames may
//! arrive in one read (pipelining) or one frame over many reads. A frame longer than
//! the configured cap is refused and the decoder resynchronizes at the next `0x0B`.

pub const START: u8 = 0x0B;
pub const END: u8 = 0x1C;
pub const CR: u8 = 0x0D;

/// Wraps one message in an MLLP frame.
pub fn encode(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START);
    out.extend_from_slice(message);
    out.extend_from_slice(&[END, CR]);
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole message (without the framing bytes).
    Message(Vec<u8>),
    /// A message longer than the cap was dropped (`size` bytes seen before giving up).
    TooLarge { size: usize },
}

#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max_message: usize,
    /// Inside a frame: position of its first byte in `buf`.
    in_frame: Option<usize>,
    /// Dropping an over-long frame until its end (or the next start byte).
    discarding: bool,
    /// Bytes skipped outside frames so far (for the connection log).
    pub skipped: usize,
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Self { buf: Vec::new(), max_message, in_frame: None, discarding: false, skipped: 0 }
    }

    /// Adds bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes of an unfinished frame held now (zero between frames).
    pub fn pending(&self) -> usize {
        self.in_frame.map(|start| self.buf.len() - start).unwrap_or(0)
    }

    /// The next complete frame, if the bytes pushed so far hold one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            match self.in_frame {
                None => {
                    let start = self.buf.iter().position(|b| *b == START);
                    match start {
                        Some(i) => {
                            self.skipped += i;
                            self.buf.drain(..=i);
                            self.in_frame = Some(0);
                            self.discarding = false;
                        }
                        None => {
                            self.skipped += self.buf.len();
                            self.buf.clear();
                            return None;
                        }
                    }
                }
                Some(start) => {
                    // The end is 0x1C 0x0D; a 0x1C as the last byte read may still get its CR.
                    let end = self.buf[start..].windows(2).position(|w| w == [END, CR]).map(|i| start + i);
                    match end {
                        Some(e) => {
                            let body: Vec<u8> = self.buf[start..e].to_vec();
                            self.buf.drain(..e + 2);
                            self.in_frame = None;
                            if self.discarding {
                                self.discarding = false;
                                return Some(Frame::TooLarge { size: body.len() + self.max_message });
                            }
                            // A sender that dropped the end of a frame and started a new one:
                            // keep only the newest start (the older bytes are lost anyway).
                            if let Some(restart) = body.iter().rposition(|b| *b == START) {
                                self.skipped += restart + 1;
                                return Some(Frame::Message(body[restart + 1..].to_vec()));
                            }
                            return Some(Frame::Message(body));
                        }
                        None => {
                            if self.buf.len() - start > self.max_message {
                                // Too long: drop what is held, keep watching for the end.
                                let keep_last = self.buf.last() == Some(&END);
                                self.buf.clear();
                                if keep_last {
                                    self.buf.push(END);
                                }
                                if !self.discarding {
                                    self.discarding = true;
                                }
                            }
                            return None;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(d: &mut Decoder) -> Vec<Frame> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    #[test]
    fn pipelined_frames_split_anywhere_and_noise_between_them() {
        let mut wire = b"\r\n".to_vec();
        wire.extend(encode(b"MSH|one"));
        wire.extend(b"\n");
        wire.extend(encode(b"MSH|two"));
        wire.extend(encode(b"MSH|three"));
        for split in 0..wire.len() {
            let mut d = Decoder::new(1024);
            d.push(&wire[..split]);
            let mut got = frames(&mut d);
            d.push(&wire[split..]);
            got.extend(frames(&mut d));
            let want: Vec<Frame> = ["MSH|one", "MSH|two", "MSH|three"].iter().map(|m| Frame::Message(m.as_bytes().to_vec())).collect();
            assert_eq!(got, want, "split at {split}");
            assert_eq!(d.skipped, 3);
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn an_over_long_frame_is_refused_and_the_next_one_still_arrives() {
        let mut d = Decoder::new(10);
        d.push(&[START]);
        d.push(&[b'x'; 25]);
        assert_eq!(d.next_frame(), None);
        d.push(&[END, CR]);
        assert!(matches!(d.next_frame(), Some(Frame::TooLarge { .. })));
        d.push(&encode(b"MSH|ok"));
        assert_eq!(d.next_frame(), Some(Frame::Message(b"MSH|ok".to_vec())));
    }

    #[test]
    fn a_frame_restarted_without_its_end_keeps_the_newest_message() {
        let mut d = Decoder::new(1024);
        d.push(&[START]);
        d.push(b"MSH|lost");
        d.push(&encode(b"MSH|kept"));
        assert_eq!(d.next_frame(), Some(Frame::Message(b"MSH|kept".to_vec())));
    }
}
