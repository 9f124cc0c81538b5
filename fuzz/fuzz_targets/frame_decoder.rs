//! The frame decoder on arbitrary bytes, fed in arbitrary pieces: it must
//! never panic, never yield a frame over the limit, and end cleanly or with
//! a typed error at end of input.

#![no_main]

use bytes::BytesMut;
use exthost::codec::{ClientCodec, ServerCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fn run<D: Decoder>(mut codec: D, data: &[u8], step: usize) {
    let mut buf = BytesMut::new();
    for chunk in data.chunks(step.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    // A small limit so that "over the limit" is reachable.
    run(ClientCodec::with_max_frame_len(1024), rest, step as usize);
    run(ServerCodec::new(), rest, step as usize);
});
