//! The MLLP framer and the HL7 v2 parser on arbitrary bytes: no panic, every frame is
//! accounted for, a parsed message re-encodes to itself, and its ACK parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use radiology::interop::hl7::{ack, message::Message, mllp};

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the stream is split into two reads.
    let (split, stream) = match data.split_first() {
        Some((s, rest)) => ((*s as usize) % (rest.len() + 1), rest),
        None => return,
    };
    let mut decoder = mllp::Decoder::new(4096);
    let mut frames = Vec::new();
    decoder.push(&stream[..split]);
    while let Some(f) = decoder.next_frame() {
        frames.push(f);
    }
    decoder.push(&stream[split..]);
    while let Some(f) = decoder.next_frame() {
        frames.push(f);
    }
    // Parsing the whole input as a message must not panic either.
    let _ = Message::parse(stream);
    for frame in frames {
        let mllp::Frame::Message(bytes) = frame else { continue };
        let Ok(message) = Message::parse(&bytes) else { continue };
        let encoded = message.to_bytes();
        let again = Message::parse(&encoded).expect("an encoded message parses");
        assert_eq!(again.segments, message.segments);
        let reply = ack::build(Some(&message), ack::AckCode::AA, None, "20240101000000", "ACK1");
        assert!(Message::parse(reply.as_bytes()).is_ok(), "the ACK of {:?} does not parse: {reply:?}", message.encode());
    }
});
