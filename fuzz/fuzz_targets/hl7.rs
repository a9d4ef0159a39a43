//! The MLLP framer, the HL7 v2 parser and the message mappings (ORM/OMI → orders,
//! ORU → reports, the duplicate hash, ACKs) on arbitrary bytes: no panic, every frame is
//! accounted for, a parsed message re-encodes to itself, and its ACK parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use radiology::interop::hl7::{ack, inbound, message::Message, mllp};

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
        // What the listener does with a message before storing it.
        let _ = inbound::content_hash(&bytes);
        let utc = chrono::FixedOffset::east_opt(0).unwrap();
        match radiology::orders::from_hl7::orders(&message, utc) {
            Ok(orders) => {
                for o in orders {
                    let state = o.apply(None);
                    let _ = radiology::orders::fhir::service_request(&state);
                }
            }
            Err(e) => {
                let err = ack::build(Some(&message), ack::AckCode::AE, Some(&e), "20240101000000", "ACK2");
                assert!(Message::parse(err.as_bytes()).is_ok(), "the AE of {:?} does not parse: {err:?}", message.encode());
            }
        }
        if let Ok(results) = radiology::reports::from_hl7::results(&message, utc) {
            for r in results {
                // A result the listener maps must be a report the store accepts.
                if let Err(issues) = radiology::reports::from_fhir::map(r.resource.clone()) {
                    panic!("an ORU mapped to an invalid report: {issues:?}\n{:?}", message.encode());
                }
            }
        }
    }
});
