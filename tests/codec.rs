//! Framing: exact bytes, round trips of every message, and hostile input.

use bytes::BytesMut;
use exthost::codec::{ClientCodec, CodecError, ServerCodec, MAX_FRAME_LEN};
use exthost::proto::{
    capability::Cap, ext_request, ext_response, Capability, ExtRequest, ExtResponse, QueryCap,
    ToolDef, ToolsList,
};
use futures::StreamExt;
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Decoder, Encoder, FramedRead};

#[test]
fn tool_call_frame_has_exact_bytes() {
    let mut buf = BytesMut::new();
    let req = ExtRequest::tool_call_full("echo", "{}", "a", Some(7));
    ClientCodec::new().encode(req, &mut buf).unwrap();
    // payload: field 3 (tool_call), len 15: name "echo", args "{}", agent "a", task_id 7
    let expected: &[u8] = b"\x00\x00\x00\x11\x1a\x0f\x0a\x04echo\x12\x02{}\x1a\x01a\x20\x07";
    assert_eq!(&buf[..], expected);
}

#[test]
fn correlation_id_is_field_1000_outside_the_oneof() {
    let mut req = ExtRequest::register_tools();
    req.correlation_id = Some(5);
    let mut buf = BytesMut::new();
    ClientCodec::new().encode(req, &mut buf).unwrap();
    // register_tools (field 2), then field 1000 as a varint: tag 8000 is
    // 0xc0 0x3e.
    assert_eq!(&buf[..], b"\x00\x00\x00\x05\x12\x00\xc0\x3e\x05");

    // An answer without the field, as older extensions send, decodes with
    // no id.
    let mut buf = BytesMut::from(&b"\x00\x00\x00\x02\x32\x00"[..]);
    let resp = ClientCodec::new().decode(&mut buf).unwrap().unwrap();
    assert_eq!(resp, ExtResponse::configured());
    assert_eq!(resp.correlation_id, None);
}

#[test]
fn ready_frame_decodes_from_hand_written_bytes() {
    // ExtResponse{ready{version "0.2", service "s", capabilities [tools ["t"]]}}
    let payload: &[u8] = b"\x0a\x0f\x0a\x030.2\x12\x01s\x1a\x05\x0a\x03\x0a\x01t";
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    let resp = ClientCodec::new().decode(&mut buf).unwrap().unwrap();
    assert_eq!(
        resp,
        ExtResponse::ready("0.2", "s", vec![Capability::tools(["t"])])
    );
    assert!(buf.is_empty());
}

#[test]
fn oversized_prefix_is_rejected_before_allocating() {
    let mut buf = BytesMut::with_capacity(16);
    buf.extend_from_slice(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
    buf.extend_from_slice(b"\x0a\x00");
    let err = ServerCodec::new().decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { len, max } if len == MAX_FRAME_LEN + 1 && max == MAX_FRAME_LEN),
        "{err:?}"
    );
    assert!(
        buf.capacity() < 1024,
        "the codec reserved {} bytes",
        buf.capacity()
    );
}

#[test]
fn frame_at_the_limit_is_accepted_and_one_byte_more_is_not() {
    let mut codec = ClientCodec::with_max_frame_len(8);
    let mut buf = BytesMut::new();
    // 8 bytes: tool_result with a 4-byte string: 1a 06 0a 04 xxxx
    codec
        .encode(ExtRequest::service_query("abcd"), &mut buf)
        .unwrap();
    assert_eq!(buf.len(), 4 + 8);
    let err = codec
        .encode(ExtRequest::service_query("abcde"), &mut BytesMut::new())
        .unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { len: 9, max: 8 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn garbage_payload_is_a_decode_error() {
    let (mut w, r) = tokio::io::duplex(64);
    w.write_all(b"\x00\x00\x00\x03\xff\xff\xff").await.unwrap();
    let mut frames = FramedRead::new(r, ClientCodec::new());
    let err = frames.next().await.unwrap().unwrap_err();
    assert!(matches!(err, CodecError::Decode(_)), "{err:?}");
}

#[tokio::test]
async fn eof_inside_a_frame_is_a_truncation_error() {
    let (mut w, r) = tokio::io::duplex(64);
    w.write_all(b"\x00\x00\x00\x0a\x1a\x03").await.unwrap();
    drop(w);
    let mut frames = FramedRead::new(r, ClientCodec::new());
    let err = frames.next().await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Truncated {
                expected: 14,
                received: 6
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn eof_between_frames_is_a_clean_end() {
    let (mut w, r) = tokio::io::duplex(64);
    let mut buf = BytesMut::new();
    ServerCodec::new()
        .encode(ExtResponse::configured(), &mut buf)
        .unwrap();
    w.write_all(&buf).await.unwrap();
    drop(w);
    let mut frames = FramedRead::new(r, ClientCodec::new());
    assert_eq!(
        frames.next().await.unwrap().unwrap(),
        ExtResponse::configured()
    );
    assert!(frames.next().await.is_none());
}

fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn request() -> impl Strategy<Value = ExtRequest> {
    (bare_request(), proptest::option::of(any::<u64>())).prop_map(|(mut r, id)| {
        r.correlation_id = id;
        r
    })
}

fn bare_request() -> impl Strategy<Value = ExtRequest> {
    prop_oneof![
        text().prop_map(ExtRequest::hello),
        Just(ExtRequest::register_tools()),
        (text(), text(), text(), proptest::option::of(any::<u64>()))
            .prop_map(|(n, a, g, t)| ExtRequest::tool_call_full(n, a, g, t)),
        text().prop_map(ExtRequest::service_query),
        Just(ExtRequest::shutdown()),
        text().prop_map(ExtRequest::configure),
        Just(ExtRequest::get_schema()),
        Just(ExtRequest::default()),
    ]
}

fn capability() -> impl Strategy<Value = Capability> {
    prop_oneof![
        proptest::collection::vec(text(), 0..4).prop_map(|names| Capability {
            cap: Some(Cap::Tools(ToolsList { names }))
        }),
        Just(Capability {
            cap: Some(Cap::Query(QueryCap {}))
        }),
    ]
}

fn response() -> impl Strategy<Value = ExtResponse> {
    (bare_response(), proptest::option::of(any::<u64>())).prop_map(|(mut r, id)| {
        r.correlation_id = id;
        r
    })
}

fn bare_response() -> impl Strategy<Value = ExtResponse> {
    let tool = (
        text(),
        text(),
        proptest::collection::vec(any::<u8>(), 0..32),
        any::<bool>(),
    )
        .prop_map(|(name, description, parameters, strict)| ToolDef {
            name,
            description,
            parameters,
            strict,
        });
    prop_oneof![
        (
            text(),
            text(),
            proptest::collection::vec(capability(), 0..3)
        )
            .prop_map(|(v, s, c)| ExtResponse::ready(v, s, c)),
        proptest::collection::vec(tool, 0..4).prop_map(ExtResponse::tool_schemas),
        text().prop_map(ExtResponse::tool_result),
        text().prop_map(ExtResponse::service_query_result),
        text().prop_map(ExtResponse::error),
        Just(ExtResponse::configured()),
        text().prop_map(ExtResponse::schema_result),
    ]
}

proptest! {
    #[test]
    fn every_request_round_trips(reqs in proptest::collection::vec(request(), 1..8)) {
        let mut buf = BytesMut::new();
        for r in &reqs {
            ClientCodec::new().encode(r.clone(), &mut buf).unwrap();
        }
        let mut dec = ServerCodec::new();
        for r in &reqs {
            let got = dec.decode(&mut buf).unwrap();
            prop_assert_eq!(got.as_ref(), Some(r));
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn every_response_round_trips(resps in proptest::collection::vec(response(), 1..8)) {
        let mut buf = BytesMut::new();
        for r in &resps {
            ServerCodec::new().encode(r.clone(), &mut buf).unwrap();
        }
        // Feed the bytes one at a time: partial frames must wait, not fail.
        let mut dec = ClientCodec::new();
        let mut feed = BytesMut::new();
        let mut out = Vec::new();
        for b in buf.iter() {
            feed.extend_from_slice(&[*b]);
            while let Some(r) = dec.decode(&mut feed).unwrap() {
                out.push(r);
            }
        }
        prop_assert_eq!(out, resps);
    }
}

/// Bytes of one message, and a check of what they must decode as.
type Case<M> = (&'static [u8], fn(&M) -> bool);

#[test]
fn oneof_numbers_match_the_wire_table() {
    // Spot-check field numbers against DESIGN.md by decoding hand-made tags.
    let cases: &[Case<ExtRequest>] = &[
        (b"\x0a\x00", |r| {
            matches!(r.msg, Some(ext_request::Msg::Hello(_)))
        }),
        (b"\x12\x00", |r| {
            matches!(r.msg, Some(ext_request::Msg::RegisterTools(_)))
        }),
        (b"\x1a\x00", |r| {
            matches!(r.msg, Some(ext_request::Msg::ToolCall(_)))
        }),
        (b"\x22\x00", |r| {
            matches!(r.msg, Some(ext_request::Msg::ServiceQuery(_)))
        }),
        (b"\x2a\x00", |r| {
            matches!(r.msg, Some(ext_request::Msg::Shutdown(_)))
        }),
        (b"\x32\x00", |r| {
            matches!(r.msg, Some(ext_request::Msg::Configure(_)))
        }),
        (b"\x5a\x00", |r| {
            matches!(r.msg, Some(ext_request::Msg::GetSchema(_)))
        }),
    ];
    for (bytes, check) in cases {
        let r = <ExtRequest as prost::Message>::decode(*bytes).unwrap();
        assert!(check(&r), "{bytes:?} decoded as {r:?}");
    }
    let cases: &[Case<ExtResponse>] = &[
        (b"\x0a\x00", |r| {
            matches!(r.msg, Some(ext_response::Msg::Ready(_)))
        }),
        (b"\x12\x00", |r| {
            matches!(r.msg, Some(ext_response::Msg::ToolSchemas(_)))
        }),
        (b"\x1a\x00", |r| {
            matches!(r.msg, Some(ext_response::Msg::ToolResult(_)))
        }),
        (b"\x22\x00", |r| {
            matches!(r.msg, Some(ext_response::Msg::ServiceQueryResult(_)))
        }),
        (b"\x2a\x00", |r| {
            matches!(r.msg, Some(ext_response::Msg::Error(_)))
        }),
        (b"\x32\x00", |r| {
            matches!(r.msg, Some(ext_response::Msg::Configured(_)))
        }),
        (b"\x52\x00", |r| {
            matches!(r.msg, Some(ext_response::Msg::SchemaResult(_)))
        }),
    ];
    for (bytes, check) in cases {
        let r = <ExtResponse as prost::Message>::decode(*bytes).unwrap();
        assert!(check(&r), "{bytes:?} decoded as {r:?}");
    }
}

#[test]
fn a_payload_arriving_in_pieces_is_never_read_as_a_length_prefix() {
    // Regression: the codec once re-checked the first bytes of a payload
    // that arrived after its header as if they were a new length prefix.
    let mut frame = BytesMut::new();
    ServerCodec::new()
        .encode(ExtResponse::tool_result("x".repeat(40)), &mut frame)
        .unwrap();
    let mut dec = ClientCodec::with_max_frame_len(64);
    let mut buf = BytesMut::from(&frame[..4]);
    assert!(dec.decode(&mut buf).unwrap().is_none());
    // The payload starts with bytes that, read as a length, exceed 64.
    buf.extend_from_slice(&frame[4..10]);
    assert!(dec.decode(&mut buf).unwrap().is_none());
    buf.extend_from_slice(&frame[10..]);
    let got = dec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(got, ExtResponse::tool_result("x".repeat(40)));
}

mod tolerant {
    use bytes::{BufMut, BytesMut};
    use exthost::codec::{CodecError, Frame, TolerantClientCodec};
    use exthost::proto::ExtResponse;
    use tokio_util::codec::Decoder;

    fn frame(payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32(payload.len() as u32);
        buf.put_slice(payload);
        buf
    }

    #[test]
    fn a_frame_exactly_at_the_limit_is_read_and_one_over_is_skipped_in_step() {
        let answer = prost::Message::encode_to_vec(&ExtResponse::tool_result("abcdef"));
        let mut codec = TolerantClientCodec::with_max_frame_len(answer.len());
        assert_eq!(codec.max_frame_len(), answer.len());
        assert!(format!("{codec:?}").contains(&answer.len().to_string()));
        let mut buf = frame(&answer);
        let Some(Frame::Message(resp)) = codec.decode(&mut buf).unwrap() else {
            panic!("a frame at the limit is read");
        };
        assert_eq!(resp, ExtResponse::tool_result("abcdef"));
        // One byte over: refused from its header, skipped as it arrives,
        // then the next frame is read as usual.
        let mut over = answer.clone();
        over.push(0);
        let mut buf = frame(&over);
        buf.extend_from_slice(&frame(&answer));
        let Some(Frame::Unusable(CodecError::FrameTooLarge { len, max })) =
            codec.decode(&mut buf).unwrap()
        else {
            panic!("over the limit is unusable");
        };
        assert_eq!((len, max), (answer.len() + 1, answer.len()));
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Message(_))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn an_empty_frame_is_read_from_its_header_alone() {
        let mut codec = TolerantClientCodec::with_max_frame_len(16);
        let mut buf = frame(b"");
        assert!(
            matches!(codec.decode(&mut buf).unwrap(), Some(Frame::Message(r)) if r == ExtResponse::default())
        );
    }

    #[test]
    fn a_frame_in_pieces_is_read_once_whole() {
        let answer = prost::Message::encode_to_vec(&ExtResponse::tool_result("pieces"));
        let whole = frame(&answer);
        let mut codec = TolerantClientCodec::with_max_frame_len(1024);
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            buf.put_u8(*byte);
            let item = codec.decode(&mut buf).unwrap();
            assert_eq!(item.is_some(), i == whole.len() - 1, "byte {i}");
        }
    }
}
